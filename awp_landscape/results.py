"""What the report reads, gathered from result folders (:mod:`awp_landscape.report.collect`):
the training runs and every measure's results by the measure's name. Each measure's report
section takes a :class:`Results`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """One training run folder."""

    label: str
    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]


@dataclass
class Results:
    """Everything the report reads: the runs, each measure's results by its name
    (``res["gap"]``; empty where absent), and what a replicated demo or a sweep adds."""

    root: Path
    runs: list[Run] = field(default_factory=list)
    measures: dict[str, Any] = field(default_factory=dict)
    demo_config: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)  # a replicated demo's seeds
    seed_histories: dict[int, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    replicates: dict[str, Any] = field(default_factory=dict)  # replicates.json
    sweep: dict[str, Any] = field(default_factory=dict)  # sweep.json

    def __getitem__(self, name: str) -> Any:
        """A measure's results (a list or a dict; empty when it left none)."""
        if name not in self.measures:
            raise KeyError(f"no measure {name!r}; the measures are {', '.join(self.measures)}")
        return self.measures[name]


def per_epoch_evaluation(res: Results) -> str:
    """What the per-epoch curves measured, e.g. "PGD-5; 250 test, 200 train images"."""
    cfg = res.demo_config.get("training") or (res.runs[0].config if res.runs else {})
    steps, n_test = cfg.get("eval_steps"), cfg.get("test_eval_size")
    n_train = cfg.get("train_eval_size")
    if steps is None:
        return "PGD"
    test = "all test images" if not n_test else f"{n_test} test images"
    return f"PGD-{steps} per evaluated epoch; {test}, {n_train} train images"
