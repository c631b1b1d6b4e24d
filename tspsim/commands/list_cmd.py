"""``tspsim list topologies|models|schedules|stacks``."""

from __future__ import annotations

import click


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
        from tspsim.schedules import SCHEDULES

        rows = [("name", "description")]
        for name in SCHEDULES.names():
            rows.append((name, SCHEDULES.get(name).description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
