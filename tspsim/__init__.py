"""tspsim: a discrete-event simulator of TSP, TP, SP and TP+SP schedules for LLM training and inference.

The pipeline (design.md §1): a ModelConfig, a Layout and a Workload go through a schedule generator
(:mod:`tspsim.schedules`) into an :class:`~tspsim.opgraph.OpGraph`, which
:func:`tspsim.engine.sim.replay` runs on a :class:`~tspsim.spec.topology.Topology` to produce a
:class:`~tspsim.engine.timeline.Timeline`; metrics, the viewer and the exports read only the Timeline.
"""

__version__ = "0.1.0"
