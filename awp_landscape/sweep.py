"""``awp sweep``: AWP's gamma trade-off (rebuttal R#2 Q3), one run per gamma and seed.

Every gamma (0 is plain AT) is trained with the demo's training plan and every seed, then each
run's best and last checkpoint are evaluated (natural and PGD-20), and the last checkpoint's
robust gap and expected and worst-case flatness measured, with the same functions as the demo.
Per gamma the seeds give a mean and, from three seeds on, a t interval. Everything is kept in
the output folder and reused when the sweep is run again (more gammas or seeds add runs).

    out/seed<k>/gamma_<g>/   a run folder (config.json, metrics.jsonl, checkpoints/)
    out/seed<k>/eval/        gamma_<g>_{best,last}.json
    out/seed<k>/analysis/    gap.json, flatness/ (last checkpoints)
    out/sweep.json, sweep.csv, sweep_*.png
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.flatness import FlatnessConfig
from analysis.gap import GapConfig
from analysis.stats import t_interval
from analysis.worst_case import WorstCaseConfig
from awp import distributed
from awp.config import PGD20_EVAL, opt
from awp.evaluate import EvalConfig
from awp.io import exclusive_output, read_json, write_csv, write_json
from awp.runs import RunFolder
from awp_landscape.commands.flatness import measure_flatness
from awp_landscape.commands.gap import measure_gap
from awp_landscape.console import say
from awp_landscape.inputs import Inputs, Sources
from awp_landscape.pipeline import evaluate_runs, record_config, train_all
from awp_landscape.plans import MeasurePlan, TrainingPlan

MIN_SEEDS = 3  # an interval from three seeds on


@dataclass(frozen=True)
class SweepPlan(MeasurePlan):
    """Sizes of the measurements of every run of a sweep: those of :class:`MeasurePlan`, and
    the one noise scale of its expected flatness."""

    flatness_alpha: float = opt(0.1, "noise scale of the expected flatness (layer mode)")


@dataclass(frozen=True)
class SweepConfig:
    """What ``awp sweep`` trains and measures."""

    out: str = opt("runs/sweep", "sweep folder")
    gammas: tuple[float, ...] = opt(
        (0.0, 0.0025, 0.005, 0.01, 0.02), "AWP radii to train (0 = AT without AWP)"
    )
    seeds: tuple[int, ...] = opt((0,), "seeds; every gamma is trained with each")
    training: TrainingPlan = opt(TrainingPlan(), "training of every run")
    plan: SweepPlan = opt(SweepPlan(), "measurement sizes")

    def __post_init__(self) -> None:
        object.__setattr__(self, "gammas", tuple(float(g) for g in self.gammas))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.gammas or any(not 0 <= g < 1 for g in self.gammas):
            raise ValueError(f"gammas={self.gammas}: give values in [0, 1) (0 = AT)")
        if len(set(self.gammas)) != len(self.gammas) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("gammas and seeds must not repeat")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds={self.seeds}: give one or more seeds >= 0")


def run_name(gamma: float) -> str:
    """``gamma_0``, ``gamma_0.005``: the folder and label of a run."""
    return f"gamma_{gamma:g}"


MEASURES = (
    "natural accuracy (best)",
    "natural accuracy (last)",
    "robust accuracy (best)",
    "robust accuracy (last)",
    "robust gap (last)",
    "expected flatness (last)",
    "worst-case flatness (last)",
)


def _accuracies(path: Path) -> dict[str, float]:
    """Natural and PGD-20 accuracy of an evaluation file (each attack alone)."""
    rows = {r["attack"]: r for r in read_json(path)["results"]}
    out = {}
    for k in ("natural", "pgd20"):
        if k in rows:
            alone = rows[k].get("accuracy_alone")
            out[k] = float(alone if alone is not None else rows[k]["accuracy"])
    return out


def _measure_seed(cfg: SweepConfig, seed: int, *, progress: bool) -> list[dict[str, Any]]:
    """Train (or reuse) every gamma of one seed, then measure it; one row per gamma."""
    folder = Path(cfg.out) / f"seed{seed}"
    configs = {
        run_name(g): cfg.training.train_config(folder / run_name(g), seed=seed, awp=g > 0, gamma=g)
        for g in cfg.gammas
    }
    train_all(configs, progress=progress, log=say)
    runs = {name: RunFolder(c.out) for name, c in configs.items()}
    inputs = Inputs(distributed.pick_device(cfg.training.device), progress=progress)
    plan = cfg.plan
    cfg_eval = EvalConfig(attacks=("natural", "pgd20"), n=plan.eval_n, cascade=False)
    evaluate_runs(runs, folder, cfg=cfg_eval, inputs=inputs, progress=progress)
    last = [r.last for r in runs.values()]
    attack = dataclasses.replace(PGD20_EVAL, steps=plan.analysis_steps)
    analysis = folder / "analysis"
    device = cfg.training.device
    gaps = measure_gap(
        last,
        GapConfig(n_train=plan.gap_n, n_test=plan.gap_n, attack=attack),
        out=analysis,
        sources=Sources(device=device, progress=progress),
    )
    flat = FlatnessConfig(
        alphas=(plan.flatness_alpha,),
        samples=plan.flatness_samples,
        n_examples=plan.flatness_n,
        attack=attack,
    )
    results = measure_flatness(
        last,
        flat,
        out=analysis,
        labels=list(runs),
        worst=WorstCaseConfig(gammas=(plan.worst_gamma,), ascent_steps=plan.worst_steps),
        sources=Sources(device=device, progress=progress),
        figures=False,
    )
    rows = []
    for (name, gamma), gap, res in zip(zip(runs, cfg.gammas), gaps, results):
        best = _accuracies(folder / "eval" / f"{name}_best.json")
        last_acc = _accuracies(folder / "eval" / f"{name}_last.json")
        by_kind = {r["kind"]: r for r in res["rows"]}
        rows.append(
            {
                "gamma": gamma,
                "seed": seed,
                "natural accuracy (best)": best.get("natural"),
                "natural accuracy (last)": last_acc.get("natural"),
                "robust accuracy (best)": best.get("pgd20"),
                "robust accuracy (last)": last_acc.get("pgd20"),
                "robust gap (last)": gap["gap"],
                "expected flatness (last)": by_kind["expected"]["flatness_loss"],
                "worst-case flatness (last)": by_kind["worst"]["flatness_loss"],
            }
        )
    return rows


def summarize(rows: Sequence[dict[str, Any]], confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per gamma and measure: the seeds' values, their mean, and a t interval from three seeds."""
    out = []
    for gamma in sorted({r["gamma"] for r in rows}):
        mine = [r for r in rows if r["gamma"] == gamma]
        for measure in MEASURES:
            values = [float(r[measure]) for r in mine if r.get(measure) is not None]
            if not values:
                continue
            low = high = None
            if len(values) >= MIN_SEEDS:
                low, high = t_interval(values, confidence)
            out.append(
                {
                    "gamma": gamma,
                    "measure": measure,
                    "n": len(values),
                    "mean": float(sum(values) / len(values)),
                    "low": low,
                    "high": high,
                    "values": values,
                    "note": "" if low is not None else f"no interval with {len(values)} seed(s)",
                }
            )
    return out


def run_sweep(cfg: SweepConfig, *, progress: bool = True) -> Path:
    """Train and measure every gamma and seed, write sweep.json/.csv and the figures."""
    out = Path(cfg.out)
    with exclusive_output(out, folder_lock="sweep"):
        record_config(out, "sweep_config.json", cfg, growable=("gammas", "seeds"))
        rows = [row for seed in cfg.seeds for row in _measure_seed(cfg, seed, progress=progress)]
        summary = summarize(rows)
        write_json(
            out / "sweep.json",
            {"gammas": cfg.gammas, "seeds": cfg.seeds, "rows": rows, "summary": summary},
        )
        write_csv(out / "sweep.csv", rows)
        _figures(summary, out)
        for r in summary:
            if r["measure"] in ("robust accuracy (last)", "natural accuracy (last)"):
                ci = f" [{r['low']:.3f}, {r['high']:.3f}]" if r["low"] is not None else ""
                say(f"gamma {r['gamma']:g}: {r['measure']} {r['mean']:.3f}{ci} (n={r['n']})")
    return out / "sweep.json"


def _figures(summary: list[dict[str, Any]], out: Path) -> None:
    # matplotlib is imported only when figures are drawn: `awp` starts without it.
    from figures.style import save_figure
    from figures.sweep import plot_tradeoff, plot_vs_gamma

    save_figure(plot_tradeoff(summary), out / "sweep_tradeoff")
    panels = ("robust gap (last)", "expected flatness (last)", "worst-case flatness (last)")
    save_figure(plot_vs_gamma(summary, panels), out / "sweep_gap_flatness")
