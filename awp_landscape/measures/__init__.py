"""The registry of measures: every measure of the toolkit, in the order the demo runs them and
the report shows them.

Each module defines one :class:`~awp_landscape.measures.base.Measure`, ``MEASURE``: its command
(``awp <command>``), its computation, its sizes in the demo's and the sweep's plans, its reader,
its report sections, its measures over seeds and its sweep columns. The command line, the
pipeline (``awp demo``, ``awp reproduce``), the report, the table over seeds and the sweep iterate
over :data:`MEASURES`; nothing else names a measure's files. Adding a measure is one module here,
its figure in :mod:`figures`, and one line below. Importing this package imports no torch.
"""

from __future__ import annotations

from awp_landscape.measures import (
    certify,
    connect,
    correlate,
    curvature,
    evaluate,
    flatness,
    flatness_epochs,
    gap,
    hist,
    landscape,
    predictors,
    quantize,
    sharpness,
    spectra,
    training,
    trajectory,
)
from awp_landscape.measures.base import Context, Measure, ReportSection, SweepColumn

#: Every measure, in the order the pipeline runs them and the report shows them.
MEASURES: tuple[Measure, ...] = (
    training.MEASURE,
    evaluate.MEASURE,
    gap.MEASURE,
    landscape.MEASURE,
    trajectory.MEASURE,
    hist.MEASURE,
    spectra.MEASURE,
    flatness.MEASURE,
    sharpness.MEASURE,
    curvature.MEASURE,
    flatness_epochs.MEASURE,
    correlate.MEASURE,
    certify.MEASURE,
    connect.MEASURE,
    quantize.MEASURE,
    predictors.MEASURE,
)

#: The measures a sweep runs, in order.
SWEEP_MEASURES: tuple[Measure, ...] = tuple(m for m in MEASURES if "sweep" in m.pipelines)


def measure(name: str) -> Measure:
    """The measure called ``name``."""
    for m in MEASURES:
        if m.name == name:
            return m
    raise KeyError(f"no measure {name!r}; the measures are {', '.join(m.name for m in MEASURES)}")


__all__ = ["MEASURES", "SWEEP_MEASURES", "Context", "Measure", "ReportSection", "SweepColumn",
           "measure"]  # fmt: skip
