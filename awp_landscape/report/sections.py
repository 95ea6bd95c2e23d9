"""The report's own sections, beside the measures' (:data:`awp_landscape.measures.MEASURES`): the
intro, the first screen (both methods' learning curves and the outcome table over seeds), a
section that could not be drawn, and what a demo folder has not measured yet."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from analysis.outcome import outcome_rows
from analysis.replicates import MIN_SEEDS
from awp_landscape.measures import MEASURES
from awp_landscape.results import Results, Run, per_epoch_evaluation
from figures.curves import plot_story_curves
from figures.html import FigureBlock, Section, Table

log = logging.getLogger(__name__)


def intro(cfg: Mapping[str, Any], seeds: Sequence[int]) -> str:
    training = cfg.get("training", cfg)  # older demo_config.json files are flat
    model = training.get("model")
    name, width = (
        (model.get("name"), model.get("width"))
        if isinstance(model, Mapping)
        else (model, training.get("width"))
    )
    data = training.get("data", {})
    seeds = list(seeds) or list(cfg.get("seeds", [cfg.get("seed", 0)]))
    return (
        f"Trained {name} (width {width}) with AT and AT-AWP (gamma {cfg.get('gamma')}) for "
        f"{training.get('epochs')} epochs on {data.get('dataset')}, once per seed "
        f"({', '.join(map(str, seeds))}; the same seed for both methods), then measured "
        "everything below on this machine. Small data and short training make single runs "
        "noisy: the comparisons over seeds say which differences survive the seed."
    )


def drawn(section: Callable[[Results], Section], res: Results, title: str, files: str) -> Section:
    """A section, or where its files hold values it cannot read (a stage killed while it wrote
    them, a file of another version), the section saying so: the report is still written."""
    try:
        drawn = section(res)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as err:
        log.warning("report: the %s section could not be drawn from %s: %r", title, files, err)
        return Section(
            title,
            paragraphs=[
                f"Not shown: {files} holds values this section cannot read ({err!r}); rerun that "
                "command (or awp demo, which reruns the unfinished stages) to replace it."
            ],
        )
    for table in drawn.tables:  # a number a stage wrote as null was not measured
        if table.missing == "–":
            table.missing = "not measured"
    return drawn


def not_measured(res: Results, absent: Sequence[tuple[str, str]]) -> Section:
    """What a demo folder does not hold yet (a demo stopped or still running)."""
    where = res.root
    return Section(
        "Not measured",
        paragraphs=[
            f"These parts of the demo are not measured in {where}: the demo was stopped before "
            "their stages, or they failed. Run the same awp demo command again to finish them "
            "(finished stages are reused), then awp report."
        ],
        tables=[
            Table(
                [{"part": title, "reads": files} for title, files in absent],
                caption="Not measured",
            )
        ],
    )


def runs_by_seed(runs: Sequence[Run]) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Seed -> label -> history of loose run folders: runs of several seeds (AT and AT-AWP of
    seeds 0, 1, 2) keep one line each; a second run of the same label and seed is labelled by
    its folder instead of replacing the first."""
    out: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        seed = int(r.config.get("seed") or 0)
        runs_of_seed = out.setdefault(seed, {})
        label = r.label if r.label not in runs_of_seed else f"{r.label} ({r.path.name})"
        runs_of_seed[label] = r.history
    return dict(sorted(out.items()))


def story_section(res: Results) -> Section | None:
    """The first screen: both methods' learning curves (every seed) and one outcome table."""
    histories = res.seed_histories or runs_by_seed(res.runs)
    if not histories and not res.replicates:
        return None
    n = len(res.seeds) or 1
    s = Section("AT against AT-AWP: learning curves and outcome")
    if not res.seeds and len(histories) > 1:
        s.paragraphs.append(
            f"Run folders of {len(histories)} seeds (seeds {', '.join(map(str, histories))}): "
            "the curves show every seed; intervals over seeds are computed for a demo folder "
            "(awp demo --seeds 0 1 2) or a sweep (awp sweep), not for loose run folders."
        )
    elif n < MIN_SEEDS:
        s.paragraphs.append(
            f"This is {'one run' if n == 1 else f'{n} seeds'} of each method. A claim over "
            f"seeds needs {MIN_SEEDS} seeds (awp demo --seeds 0 1 2); the table below compares "
            "the runs as they came out, without intervals."
        )
    else:
        s.paragraphs.append(
            f"{n} seeds of each method, paired by seed. A difference is called only when its "
            "95% Student-t interval over seeds excludes zero."
        )
    what = per_epoch_evaluation(res)
    if histories:
        s.figures.append(
            FigureBlock.from_figure(
                plot_story_curves(histories, what=what.split(";")[0]),
                f"Robust loss and robust accuracy per evaluated epoch ({what}): test solid, "
                "train dashed, one line per seed. Robust overfitting is the test loss rising "
                "while the train loss keeps falling.",
                "learning curves of AT and AT-AWP",
            )
        )
    measures, said = list(res.replicates.get("measures", [])), []
    for m in MEASURES:
        measures, sentences = m.fold_over_seeds(measures)
        said += sentences
    rows, intervals = outcome_rows(measures)
    if rows:
        caption = "Outcome: the last checkpoint of each run unless the measure says otherwise"
        caption += (
            "; AT and AT-AWP are means over seeds"
            if intervals
            else f"; {'one run' if n == 1 else f'{n} seeds'} of each method: no intervals"
        )
        s.tables.append(Table(rows, caption=caption))
    s.paragraphs.extend(said)
    return s
