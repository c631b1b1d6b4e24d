"""What a user opens: the timeline viewer, saved result files and the Perfetto / HTA / Chakra exports."""
