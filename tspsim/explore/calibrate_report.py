"""Words and tables of ``tspsim calibrate``: the before / after table, the fitted values, the YAML comment block."""

from __future__ import annotations

from tspsim.explore.calibrate import Calibration, FittedValue, RowFit, error_factor, mean_error
from tspsim.explore.calibrate_compute import ComputeCalibration


def _num(v: float) -> str:
    return f"{v:.4g}"


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def log_line(cal: Calibration) -> list[str]:
    """One line per log: test, GPUs, nodes, algorithm, sizes."""
    out = []
    for h in cal.hosted:
        lg = h.log
        algo = f"NCCL_ALGO={h.nccl_algo}" if h.nccl_algo else "NCCL_ALGO default"
        out.append(f"{lg.name} ({lg.test}, {lg.ranks} GPUs on {h.nodes} node{'s' if h.nodes > 1 else ''}, {algo}, "
                   f"{len(lg.rows)} sizes{', summary rows' if lg.summary_only else ''})")
    return out


def errors_by_log(cal: Calibration) -> list[tuple[str, float, float]]:
    """(log, mean |error| before, after) per log, then ``all``."""
    out = []
    for h in cal.hosted:
        rows = [r for r in cal.rows if r.log == h.log.name]
        out.append((h.log.name, mean_error(rows, False), mean_error(rows, True)))
    if len(cal.hosted) > 1:
        out.append(("all", mean_error(cal.rows, False), mean_error(cal.rows, True)))
    return out


def kernel_errors(cal: ComputeCalibration) -> tuple[float, float]:
    """Mean :func:`~tspsim.explore.calibrate.error_factor` over the kernels, before and after."""
    n = len(cal.rows)
    return (sum(error_factor(r.before_s, r.kernel.time_us * 1e-6) for r in cal.rows) / n,
            sum(error_factor(r.after_s, r.kernel.time_us * 1e-6) for r in cal.rows) / n)


def _value_lines(values: tuple[FittedValue, ...], base: str, what: str) -> list[str]:
    fitted = [v for v in values if v.determined]
    out = [f"fitted {what} (before -> after, plausible range):"]
    for v in fitted:
        before, after, lo, hi = v.shown
        extra = f"  every value of the family x{v.value:.3g}" if v.parameter.scale else ""
        edge = "  AT THE EDGE" if v.at_bound else ""
        out.append(f"  {v.parameter.name:<30} {_num(before):>8} -> {_num(after):<9} [{_num(lo)}, {_num(hi)}]"
                   f"{extra}{edge}")
    rest = [v.parameter.name for v in values if not v.determined]
    if rest:
        out.append(f"not determined by these measurements (kept from {base}): {', '.join(rest)}")
    if any(v.at_bound for v in fitted):
        out.append("a value at the edge of its plausible range means the model lacks a mechanism these measurements "
                   "show (e.g. NVLSTree) or the cluster is not healthy: see tspsim check")
    return out


def table(cal: Calibration) -> list[str]:
    """The before / after table and the fitted values of a communication calibration."""
    out = [f"# calibrate {cal.base.name} to " + "; ".join(log_line(cal)),
           f"{'log':<28} {'size':>12} {'measured us':>12} {'before us':>11} {'after us':>11} {'err before':>10} "
           f"{'err after':>9}  model after"]
    for r in cal.rows:
        out.append(_row(r))
    errs = "; ".join(f"{_short(n, 40)} {b:.1%} -> {a:.1%}" for n, b, a in errors_by_log(cal))
    out.append(f"fit error, mean of max(model/measured, measured/model) - 1 over the sizes (replayed): {errs}")
    out += _value_lines(cal.values, cal.base.name, "communication parameters")
    out += [f"note: {n}" for n in cal.notes]
    return out


def _row(r: RowFit) -> str:
    return (f"{_short(r.log):<28} {r.nbytes:>12} {r.measured_s * 1e6:>12.2f} {r.before_s * 1e6:>11.2f} "
            f"{r.after_s * 1e6:>11.2f} {r.error_before:>+10.1%} {r.error_after:>+9.1%}  {r.choice}")


def compute_table(cal: ComputeCalibration, base: str) -> list[str]:
    """The before / after table and the fitted values of a compute calibration."""
    out = [f"# calibrate {base}'s GPU to {len(cal.rows)} kernel micro-benchmarks",
           f"{'kernel':<40} {'measured us':>12} {'before us':>11} {'after us':>11} {'err before':>10} "
           f"{'err after':>9}"]
    for r in cal.rows:
        out.append(f"{_short(r.kernel.label, 40):<40} {r.kernel.time_us:>12.2f} {r.before_s * 1e6:>11.2f} "
                   f"{r.after_s * 1e6:>11.2f} {r.error_before:>+10.1%} {r.error_after:>+9.1%}")
    before, after = kernel_errors(cal)
    out.append(f"fit error, mean of max(model/measured, measured/model) - 1 over the kernels: {before:.1%} -> "
               f"{after:.1%}")
    out += _value_lines(cal.values, base, "GPU parameters")
    return out


def yaml_comments(base: str, comm: Calibration | None, compute: ComputeCalibration | None,
                  benches: list[str], version: str) -> list[str]:
    """The comment block of the written topology: what was fitted, from what, and how well."""
    out = [f"Fitted by tspsim calibrate {version}: {base} calibrated to measurements.", ""]
    if comm is not None:
        out.append("nccl-tests / rccl-tests logs:")
        out += [f"  {line}" for line in log_line(comm)]
        out.append("fit error, mean of max(model/measured, measured/model) - 1 over the sizes (replayed):")
        out += [f"  {n}: {b:.1%} before, {a:.1%} after" for n, b, a in errors_by_log(comm)]
    if compute is not None:
        before, after = kernel_errors(compute)
        out.append(f"kernel micro-benchmarks: {', '.join(benches)} ({len(compute.rows)} kernels): mean |error| "
                   f"{before:.1%} before, {after:.1%} after (mean of max(model/measured, measured/model) - 1)")
    out.append("fitted values (before -> after, plausible range; sources: tspsim/explore/calibrate_params.py):")
    for cal in (comm, compute):
        if cal is None:
            continue
        for v in cal.values:
            if v.determined:
                b, a, lo, hi = v.shown
                out.append(f"  {v.parameter.name}: {_num(b)} -> {_num(a)} [{_num(lo)}, {_num(hi)}]"
                           f"{'  (at the edge)' if v.at_bound else ''}")
    return out
