"""The replay engine: simpy streams (:mod:`.sim`) over a max-min fair flow network (:mod:`.network`)."""
