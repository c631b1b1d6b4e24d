"""Many points: sweeps (grid, cache, runners, files, plots), the planner, the max-batch search, validation."""
