"""One simulation point end to end, every mode (design.md §1): layout → op graph → replay → metrics.

Calls down only: :mod:`tspsim.schedules` builds the op graph, :mod:`tspsim.engine` replays it,
:mod:`tspsim.analysis` turns the timeline into the run entry. :mod:`~tspsim.simulate.point` holds the
inputs and the result, :mod:`~tspsim.simulate.training` the train/forward path,
:mod:`~tspsim.simulate.inference` prefill, decode and generate, whose decode steps are timed by
:mod:`~tspsim.simulate.decode_timer`. :func:`simulate` is what ``tspsim run``, ``sweep``, ``plan`` and
``validate`` call (through :mod:`tspsim.explore` when they also search the max batch).
"""

from tspsim.simulate.graph import build_graph
from tspsim.simulate.graph_memo import GraphMemo
from tspsim.simulate.inference import StepProgress, simulate_inference_point
from tspsim.simulate.point import Point, RunResult
from tspsim.simulate.training import simulate_training
from tspsim.spec.loader import SpecLoader
from tspsim.spec.workload import INFERENCE_MODES

__all__ = ["GraphMemo", "Point", "RunResult", "StepProgress", "build_graph", "simulate"]


def simulate(point: Point, fold: bool = True, record_links: bool = False,
             progress: StepProgress | None = None, specs: SpecLoader | None = None,
             graphs: GraphMemo | None = None) -> RunResult:
    """Simulate one point of any mode and compute its metrics.

    ``max_batch`` stays null: :func:`tspsim.explore.max_batch.simulate_with_max_batch` searches it.
    ``progress`` hears of every finished step of an inference point (a training step is one replay).
    ``graphs`` reuses a training or forward step's graph, or an inference point's prefill and decode steps,
    across points that differ only in what the replay reads (:mod:`tspsim.simulate.graph_memo`).
    """
    if point.mode in INFERENCE_MODES:
        return simulate_inference_point(point, fold=fold, record_links=record_links, progress=progress, specs=specs,
                                        graphs=graphs)
    return simulate_training(point, fold=fold, record_links=record_links, specs=specs, graphs=graphs)
