"""``awp demo`` and ``awp reproduce``: the whole AWP story, trained, measured and reported.

``awp demo`` (what ``make demo`` runs) trains AT and AT-AWP with the same seed on the bundled
real CIFAR-10 sample with a model small enough for a CPU, long enough for AT to overfit,
keeping a checkpoint every few epochs, then measures for both: PGD-20 and CW-20 test accuracy
(best and last), the robust generalization gap of every checkpoint, 1-D weight loss landscapes
with attacks regenerated (and the fixed mode for contrast), weight histograms and per-layer
statistics, expected and worst-case flatness with the PAC-Bayes terms, and flatness against the
gap across checkpoints; then writes the report.

``awp reproduce --preset NAME`` runs the paper's full protocol (200 epochs, GPU) for a method
with and without AWP, then the same analyses at full size.

Every stage writes files into the output folder and is skipped or resumed when rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from awp.config import add_dataclass_arguments, dataclass_from_arguments, opt, to_dict
from awp.data import DataConfig


@dataclass(frozen=True)
class AnalysisPlan:
    """Sizes of the measurements after training (subsets, attacks, samples)."""

    eval_n: int = opt(500, "test images for the final PGD-20 / CW-20 evaluation (0 = all)")
    gap_n: int = opt(200, "train and test images for the robust gap of each checkpoint")
    analysis_steps: int = opt(5, "PGD steps of gap, landscape and flatness attacks")
    landscape_points: int = opt(11, "alphas in [-1, 1] of the 1-D landscape")
    landscape_n: int = opt(200, "test images per landscape point")
    flatness_n: int = opt(200, "train images of the flatness estimates")
    flatness_alphas: tuple[float, ...] = opt(
        (0.05, 0.1, 0.2), "noise scales of the flatness curve (layer mode)"
    )
    flatness_samples: int = opt(4, "noise draws per alpha (final checkpoints)")
    correlate_alpha: float = opt(0.1, "alpha of the per-checkpoint flatness (vs gap)")
    correlate_samples: int = opt(2, "noise draws per checkpoint for flatness vs gap")
    worst_gamma: float = opt(0.01, "radius of the worst-case flatness")
    worst_steps: int = opt(5, "ascent steps of the worst-case flatness")


@dataclass(frozen=True)
class DemoConfig:
    """What ``awp demo`` runs; sized for about a quarter of an hour on a 2-core CPU.

    The defaults are chosen so that AT shows robust overfitting within that budget: 500 real
    CIFAR-10 training images without augmentation and a PreActResNet-18 at a quarter width
    (about 0.7M parameters), PGD-3 training for 40 epochs with the paper's piecewise schedule
    (lr / 10 at 50% and 75%). They were chosen so that AT's test robust loss rises after the
    first decay and the whole demo fits the time budget (the analysis sizes were cut for time
    only); nothing was chosen for how AT-AWP, the flatness or the correlation came out.
    """

    out: str = opt("runs/demo", "demo folder: one run folder per method, analysis/, report.html")
    data: DataConfig = opt(DataConfig(dataset="sample", val_size=200, train_size=500), "dataset")
    model: str = opt("preactresnet18", "architecture")
    width: float = opt(0.25, "channel width multiplier (small enough for a CPU)")
    epochs: int = opt(40, "epochs per method")
    batch_size: int = opt(32, "minibatch size")
    augment: bool = opt(
        False, "random crop and flip of training images (off: memorizing shows sooner)"
    )
    attack_steps: int = opt(3, "PGD steps of the training attack (the paper: 10)")
    step_size: float = opt(3 / 255, "step size of the training attack")
    gamma: float = opt(0.01, "AWP gamma of the AT-AWP run")
    train_eval_size: int = opt(200, "train subset for the per-epoch robust train accuracy")
    test_eval_size: int = opt(250, "test subset evaluated per epoch")
    eval_steps: int = opt(5, "PGD steps of the per-epoch evaluation")
    eval_every: int = opt(3, "evaluate every k epochs (learning curves, best checkpoint)")
    save_every: int = opt(5, "keep a checkpoint every k epochs (gap and flatness vs gap)")
    seed: int = opt(0, "seed shared by both methods")
    device: str = opt("auto", "auto | cpu | cuda")
    plan: AnalysisPlan = opt(AnalysisPlan(), "analysis sizes")

    def train_configs(self) -> dict:
        """The AT and AT-AWP training configs, identical but for AWP."""
        from awp.train import TrainConfig

        base = TrainConfig(
            out=str(Path(self.out) / "at"),
            data=self.data,
            model=self.model,
            width=self.width,
            epochs=self.epochs,
            batch_size=self.batch_size,
            augment=self.augment,
            attack_steps=self.attack_steps,
            step_size=self.step_size,
            save_every=self.save_every,
            train_eval_size=self.train_eval_size,
            test_eval_size=self.test_eval_size,
            eval_steps=self.eval_steps,
            eval_every=self.eval_every,
            seed=self.seed,
            device=self.device,
        )
        awp = dataclasses.replace(
            base, out=str(Path(self.out) / "at_awp"), awp=True, gamma=self.gamma
        )
        return {"AT": base, "AT-AWP": awp}


# ----------------------------------------------------------------------------- stages
def _cli(argv: list[str]) -> None:
    from awp.cli import main

    code = main([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"`awp {' '.join(map(str, argv))}` failed with exit code {code}")


def _stage(name: str, fn: Callable[[], None], log: Callable[[str], None]) -> None:
    log(f"\n== {name}")
    t0 = time.perf_counter()
    fn()
    log(f"== {name}: done in {time.perf_counter() - t0:.0f}s")


def train_all(configs: dict, *, progress: bool, log: Callable[[str], None]) -> None:
    """Train (or resume, or reuse) every run; one dataset load shared by all."""
    from awp.cli import epoch_line
    from awp.data import load_data
    from awp.train import RunFolder, pick_device, train

    data = None
    for label, tcfg in configs.items():
        run = RunFolder(tcfg.out)
        if len(run.read_metrics()) >= tcfg.epochs and run.last.exists():
            log(f"[{label}] reusing the finished run in {run.root}")
            continue
        if data is None:
            data = load_data(tcfg.data, pick_device(tcfg.device), progress=progress)
        log(
            f"[{label}] training {tcfg.model} (width {tcfg.width}) for {tcfg.epochs} epochs on "
            f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test"
        )
        train(
            tcfg,
            resume=run.last.exists(),
            progress=progress,
            data=data,
            on_epoch=lambda r, label=label: log(f"[{label}] {epoch_line(r)}"),
        )
        log(f"[{label}] checkpoints in {run.ckpt_dir}")


def run_pipeline(
    configs: dict,
    plan: AnalysisPlan,
    out: Path,
    *,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train every config, run every analysis, write the report; returns the report's path.

    Args:
        configs: method label (AT, AT-AWP, ...) -> TrainConfig whose ``out`` is inside ``out``.
        plan: sizes of the analyses.
        out: the folder holding the runs, ``eval/``, ``analysis/`` and ``report.html``.
    """
    from awp.train import RunFolder
    from figures.report import write_report

    quiet = [] if progress else ["--no-progress"]
    dev = ["--device", device]
    steps = ["--attack-steps", plan.analysis_steps]
    analysis = out / "analysis"
    runs = {label: RunFolder(c.out) for label, c in configs.items()}
    labels = list(runs)
    last = [runs[k].last for k in labels]

    _stage("training", lambda: train_all(configs, progress=progress, log=log), log)

    def epoch_ckpts() -> list[Path]:
        # listed when a stage runs: the checkpoints exist only after training
        return [p for run in runs.values() for p in sorted(run.ckpt_dir.glob("epoch_*.pt"))]

    def evaluate() -> None:
        for label, run in runs.items():
            for which, ckpt in (("best", run.best), ("last", run.last)):
                dest = out / "eval" / f"{label}_{which}.json"
                if not ckpt.exists() or _fresh(dest, ckpt):
                    continue
                _cli(
                    [
                        "eval",
                        ckpt,
                        "--n",
                        plan.eval_n,
                        "--attacks",
                        "natural",
                        "pgd20",
                        "cw20",
                        "--no-cascade",
                        "--out",
                        dest,
                        *dev,
                        *quiet,
                    ]
                )

    def gap() -> None:
        ckpts = epoch_ckpts()
        _cli(
            [
                "gap",
                *ckpts,
                "--n-train",
                plan.gap_n,
                "--n-test",
                plan.gap_n,
                *steps,
                "--out",
                analysis,
                *dev,
                *quiet,
            ]
        )

    def landscape() -> None:
        folder = analysis / "landscape"
        resume = ["--resume"] if any(folder.glob("*.h5")) else []
        _cli(
            [
                "landscape",
                *last,
                "--labels",
                *labels,
                "--kind",
                "1d",
                f"--x=-1:1:{plan.landscape_points}",
                "--n-test",
                plan.landscape_n,
                "--n-train",
                0,
                "--attack-steps",
                plan.analysis_steps,
                "--fixed",
                "--out",
                folder,
                *resume,
                *dev,
                *quiet,
            ]
        )

    def hist() -> None:
        _cli(["hist", *last, "--labels", *labels, "--out", analysis])

    def flatness() -> None:
        _cli(
            [
                "flatness",
                *last,
                "--labels",
                *labels,
                "--alphas",
                *plan.flatness_alphas,
                "--samples",
                plan.flatness_samples,
                "--n-examples",
                plan.flatness_n,
                *steps,
                "--worst-case",
                "--gammas",
                plan.worst_gamma,
                "--ascent-steps",
                plan.worst_steps,
                "--out",
                analysis / "flatness_final",
                *dev,
                *quiet,
            ]
        )

    def flatness_epochs() -> None:
        ckpts = epoch_ckpts()
        _cli(
            [
                "flatness",
                *ckpts,
                "--alphas",
                plan.correlate_alpha,
                "--samples",
                plan.correlate_samples,
                "--n-examples",
                plan.flatness_n,
                *steps,
                "--no-figures",
                "--out",
                analysis / "flatness_epochs",
                *dev,
                *quiet,
            ]
        )

    def correlate() -> None:
        n = len(epoch_ckpts())
        if n < 3:
            log(f"skipped: a correlation needs at least 3 checkpoints, these runs have {n}")
            return
        _cli(
            [
                "correlate",
                analysis / "flatness_epochs" / "flatness.json",
                analysis / "gap.json",
                "--where",
                f"alpha={plan.correlate_alpha}",
                "--where",
                "kind=expected",
                "--x",
                "flatness_loss",
                "--out",
                analysis,
            ]
        )

    for name, fn in (
        ("evaluation (PGD-20, CW-20; best and last)", evaluate),
        ("robust generalization gap of every checkpoint", gap),
        ("weight loss landscapes (attacks regenerated, and fixed)", landscape),
        ("weight histograms", hist),
        ("expected and worst-case flatness, PAC-Bayes terms", flatness),
        ("flatness of every checkpoint", flatness_epochs),
        ("flatness versus gap", correlate),
    ):
        _stage(name, fn, log)
    html, md = write_report([out], out / "report.html")
    log(f"\nreport: {html}\nsummary: {md}")
    return html


def _fresh(dest: Path, ckpt: Path) -> bool:
    """An evaluation file exists for exactly this checkpoint's bytes."""
    if not dest.exists():
        return False
    from awp.checkpoint import sha256_file

    try:
        return json.loads(dest.read_text())["weights"]["sha256"] == sha256_file(ckpt)
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def _check_saved(path: Path, current: dict) -> None:
    """Refuse to mix settings in one folder (nothing on disk is touched)."""
    if path.exists() and json.loads(path.read_text()) != current:
        raise ValueError(
            f"{path.parent} holds results made with other settings ({path}); pass "
            f"another --out, or the same settings to reuse them"
        )


# ----------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A paper protocol: dataset, architecture and method, trained with and without AWP."""

    dataset: str
    model: str
    method: str
    depth: int = 34
    widen_factor: int = 10
    lr: float = 0.1
    epochs: int = 200


def _presets() -> dict[str, Preset]:
    out = {}
    for ds in ("cifar10", "cifar100", "svhn"):
        for arch, model in (("prn18", "preactresnet18"), ("wrn34-10", "wideresnet")):
            for method in ("at", "trades", "mart"):
                # SVHN: lr 0.01 as in Rice et al.'s and the official AWP SVHN scripts.
                out[f"{ds}-{arch}-{method}"] = Preset(
                    ds, model, method, lr=0.01 if ds == "svhn" else 0.1
                )
    return out


PRESETS: dict[str, Preset] = _presets()


@dataclass(frozen=True)
class ReproduceConfig:
    """``awp reproduce``: a preset trained with and without AWP, then every analysis."""

    preset: str = opt("cifar10-prn18-at", "dataset-architecture-method; see --list")
    out: str = opt("runs/reproduce", "output folder")
    dataset: str = opt("", "override the preset's dataset (a name or an ImageFolder path)")
    data_root: str = opt("data", "where torchvision datasets live")
    download: bool = opt(False, "let torchvision download the dataset")
    val_size: int = opt(1000, "training images held out to pick the best checkpoint")
    epochs: int = opt(0, "override the preset's 200 epochs (0 = the paper's)")
    width: float = opt(1.0, "channel width multiplier (1 = the paper's model)")
    save_every: int = opt(10, "checkpoint every k epochs (for gap and flatness vs gap)")
    seed: int = opt(0, "seed")
    device: str = opt("auto", "auto | cuda | cpu")
    plan: AnalysisPlan = opt(
        AnalysisPlan(
            eval_n=0,
            gap_n=1000,
            analysis_steps=20,
            landscape_points=21,
            landscape_n=1000,
            flatness_n=1000,
            flatness_samples=10,
            correlate_samples=5,
        ),
        "analysis sizes",
    )

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; choose one of {', '.join(sorted(PRESETS))}"
            )

    def train_configs(self) -> dict:
        from awp.train import TrainConfig

        p = PRESETS[self.preset]
        base = TrainConfig(
            out=str(Path(self.out) / p.method),
            model=p.model,
            width=self.width,
            depth=p.depth,
            widen_factor=p.widen_factor,
            method=p.method,
            lr=p.lr,
            epochs=self.epochs or p.epochs,
            save_every=self.save_every,
            seed=self.seed,
            device=self.device,
            data=DataConfig(
                dataset=self.dataset or p.dataset,
                data_root=self.data_root,
                download=self.download,
                val_size=self.val_size,
            ),
        )
        awp = dataclasses.replace(base, out=str(Path(self.out) / f"{p.method}_awp"), awp=True)
        label = p.method.upper()
        return {label: base, f"{label}-AWP": awp}


# ----------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp demo`` and ``awp reproduce`` to the CLI."""
    p = sub.add_parser(
        "demo",
        help="AT vs AT-AWP on real CIFAR-10, measured and reported",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(p, DemoConfig)
    p.set_defaults(func=_run_demo)

    r = sub.add_parser(
        "reproduce",
        help="a paper protocol with and without AWP (GPU), then the same analyses and report",
    )
    r.add_argument("--list", action="store_true", help="list the presets and exit")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(r, ReproduceConfig)
    r.set_defaults(func=_run_reproduce)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _start(out: Path, name: str, cfg: object) -> None:
    import os

    from awp.checkpoint import atomic_write_text

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "demo/reproduce run their stages in one process; on several GPUs run the stages "
            "under torchrun instead (awp train, awp landscape, awp flatness, awp gap), then "
            "awp report; see the README"
        )

    saved = out / name
    _check_saved(saved, to_dict(cfg))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(to_dict(cfg), indent=2) + "\n")


def _run_configured(cfg: DemoConfig | ReproduceConfig, args: argparse.Namespace, name: str) -> None:
    """Record ``cfg`` in its folder (refusing other settings), then run the whole pipeline."""
    out = Path(cfg.out)
    _start(out, name, cfg)
    t0 = time.perf_counter()
    run_pipeline(
        cfg.train_configs(),
        cfg.plan,
        out,
        device=cfg.device,
        progress=not args.no_progress,
        log=_log,
    )
    _log(f"finished in {(time.perf_counter() - t0) / 60:.1f} min")


def _run_demo(args: argparse.Namespace) -> int:
    _run_configured(dataclass_from_arguments(DemoConfig, args), args, "demo_config.json")
    return 0


def _run_reproduce(args: argparse.Namespace) -> int:
    if args.list:
        for name, p in sorted(PRESETS.items()):
            print(
                f"{name:24s} {p.dataset} {p.model} {p.method} (+AWP), {p.epochs} epochs, lr {p.lr}"
            )
        return 0
    _run_configured(dataclass_from_arguments(ReproduceConfig, args), args, "reproduce_config.json")
    return 0
