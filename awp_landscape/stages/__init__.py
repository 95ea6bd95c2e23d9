"""The stage registry: every measure of ``awp demo``/``reproduce`` and ``awp sweep``, in order.

Each module declares one :class:`~awp_landscape.stages.base.Stage`: its output files, how the
plan becomes its config and runs (``run(ctx)``), its reader, its report sections, its measures
over seeds and its sweep columns. The pipeline runs ``STAGES`` in order, the report reads and
draws them, the table over seeds (:mod:`awp_landscape.over_seeds`) pairs their measures, and the
sweep runs those with sweep columns. Adding a measure is one module here (with its analysis
module and its figure), and one line in ``STAGES``.
"""

from __future__ import annotations

from awp_landscape.stages import (
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
    quantize,
    spectra,
    training,
    trajectory,
)
from awp_landscape.stages.base import Context, ReportSection, Stage, SweepColumn

#: Every stage, in the order the pipeline runs them and the report shows them.
STAGES: tuple[Stage, ...] = (
    training.STAGE,
    evaluate.STAGE,
    gap.STAGE,
    landscape.STAGE,
    trajectory.STAGE,
    hist.STAGE,
    spectra.STAGE,
    flatness.STAGE,
    curvature.STAGE,
    flatness_epochs.STAGE,
    correlate.STAGE,
    certify.STAGE,
    connect.STAGE,
    quantize.STAGE,
)

#: The stages a sweep runs: those with sweep columns.
SWEEP_STAGES: tuple[Stage, ...] = tuple(s for s in STAGES if s.sweep_columns)


def stage(name: str) -> Stage:
    """The stage called ``name``."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r}; the stages are {', '.join(s.name for s in STAGES)}")


__all__ = ["STAGES", "SWEEP_STAGES", "Context", "ReportSection", "Stage", "SweepColumn", "stage"]
