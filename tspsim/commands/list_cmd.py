"""``tspsim list topologies|models|schedules|stacks``."""

from __future__ import annotations

import click

SCHEDULE_LINES: tuple[tuple[str, str], ...] = (
    ('satp-seq', 'sharded-activation TP, sequence shard: reduce-scatter + all-gather, K/V all-gather'),
    ('satp-batch', 'sharded-activation TP, batch shard: reduce-scatter + all-gather, no K/V exchange'),
    ('sp', 'sequence parallelism: replicated weights, zig-zag tokens, K/V all-gather'),
    ('tp', 'classic Megatron TP: column/row parallel, all-reduce, replicated residual'),
    ('tp+sp', '2-D grid: TP degree T inside the node x SP degree (--sp) outside'),
    ('tsp', 'folded TSP: attention weight-broadcast loop + K/V all-gather, MLP weight ring'),
    ('fsdp', 'pure FSDP / ZeRO-3: no model parallelism, parameters, gradients and optimizer state sharded over all '
             'GPUs'),
)
"""The schedule registry's names and one-line descriptions, in its order, so ``tspsim list schedules`` imports no
schedule module (tests/test_cli_lazy.py checks it against :data:`tspsim.schedules.SCHEDULES`)."""


@click.command("list")
@click.argument("what", type=click.Choice(["topologies", "models", "schedules", "stacks"]))
def list_cmd(what: str) -> None:
    """List the built-in topologies, models, schedules or software stacks.

    \b
    Examples:
      tspsim list topologies
      tspsim list models
      tspsim list stacks
    """
    if what == "topologies":
        from tspsim.spec.topology_file import load_topology, preset_names

        rows = [("name", "GPUs", "GPU", "fabric", "HBM GB")]
        for name in preset_names():
            t = load_topology(name)
            rows.append((name, str(t.world_size), t.gpu.name, t.fabric_summary, f"{t.gpu.hbm_GB:g}"))
    elif what == "models":
        from tspsim.spec.model import MODELS

        rows = [("name", "params", "layers", "hidden", "heads q/kv", "MLP", "vocab")]
        for name in MODELS.names():
            m = MODELS.get(name)
            rows.append((name, f"{m.total_params / 1e9:.2f}B", str(m.layers), str(m.hidden),
                         f"{m.q_heads}/{m.kv_heads}", "gated" if m.gated_mlp else "plain", str(m.vocab)))
    elif what == "stacks":
        from tspsim.spec.stack import DEFAULT_STACK, load_stack, preset_names

        rows = [("name", "attention", "launch", "captured", "description")]
        for name in preset_names():
            st = load_stack(name)
            rows.append((name + (" (default)" if name == DEFAULT_STACK else ""), st.attention.kernel,
                         st.host.launch, ",".join(st.host.capture) or "-", st.description))
    else:
        rows = [("name", "description"), *SCHEDULE_LINES]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
