"""The run-entry keys the tests hold tspsim to: design.md §4 (stable) and the extra keys tspsim adds.

Written out here, independently of tspsim.analysis.metrics, so a key dropped from the code fails the tests.
"""

STABLE_KEYS = {
    "schedule", "model", "topology", "mode", "seq_len", "batch", "degrees", "world_size", "replicas",
    "step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "layer_tokens_per_s", "mfu", "peak_memory_gb",
    "hbm_gb", "oom", "memory_breakdown_gb", "overlap_pct", "exposed_comm_s", "comm_bytes_per_rank",
    "layer_comm_bytes_per_rank", "assumptions", "sim_events", "sim_wall_s",
}
EXTRA_KEYS = {"tspsim_version", "compute_s", "comm_s", "topology_sha256", "model_sha256", "config", "stack",
              "collective_algorithms", "sp_attention", "sim_path",
              # issue 14: gradient accumulation and pipelines (pipeline and bubble_pct are null without --pp)
              "micro_batches", "global_batch", "bubble_pct", "pipeline"}
