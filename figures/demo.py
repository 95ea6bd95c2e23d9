"""``awp demo``: the main job. AT and AT-AWP trained side by side on real CIFAR-10 images.

Trains both methods with the same seed on the bundled CIFAR-10 sample (or ``--dataset``),
printing per-epoch metrics and where the checkpoints went. Rerunning reuses finished runs
(each run resumes from its last checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from awp.config import add_dataclass_arguments, dataclass_from_arguments, opt, to_dict
from awp.data import DataConfig


@dataclass(frozen=True)
class DemoConfig:
    """What ``awp demo`` runs; sized to finish in minutes on a 2-core CPU."""

    out: str = opt("runs/demo", "demo folder: one run folder per method inside")
    data: DataConfig = opt(DataConfig(dataset="sample", val_size=500), "dataset")
    model: str = opt("preactresnet18", "architecture")
    width: float = opt(0.125, "channel width multiplier (small enough for a CPU)")
    epochs: int = opt(4, "epochs per method")
    batch_size: int = opt(128, "minibatch size")
    gamma: float = opt(0.01, "AWP gamma of the AT-AWP run")
    save_every: int = opt(1, "keep a checkpoint every k epochs (for the analyses)")
    train_eval_size: int = opt(500, "train subset for the robust train accuracy")
    test_eval_size: int = opt(500, "test subset evaluated per epoch")
    eval_steps: int = opt(10, "PGD steps of the per-epoch evaluation")
    seed: int = opt(0, "seed shared by both methods")
    device: str = opt("auto", "auto | cpu | cuda")

    def train_configs(self):
        """The AT and AT-AWP training configs (identical but for AWP)."""
        from awp.train import TrainConfig

        base = TrainConfig(
            out=str(Path(self.out) / "at"), data=self.data, model=self.model, width=self.width,
            epochs=self.epochs, batch_size=self.batch_size, save_every=self.save_every,
            train_eval_size=self.train_eval_size, test_eval_size=self.test_eval_size,
            eval_steps=self.eval_steps, seed=self.seed, device=self.device,
        )
        awp = dataclasses.replace(base, out=str(Path(self.out) / "at_awp"), awp=True,
                                  gamma=self.gamma)
        return {"AT": base, "AT-AWP": awp}


def run_training(cfg: DemoConfig, *, progress: bool = True) -> dict[str, list[dict]]:
    """Train (or resume, or reuse) both runs; returns each method's per-epoch records."""
    from awp.cli import epoch_line
    from awp.data import load_data
    from awp.train import RunFolder, pick_device, train

    data = None
    histories = {}
    for label, tcfg in cfg.train_configs().items():
        run = RunFolder(tcfg.out)
        done = run.read_metrics()
        if len(done) >= tcfg.epochs and run.last.exists():
            print(f"[{label}] reusing the finished run in {run.root}", flush=True)
            histories[label] = done[: tcfg.epochs]
            continue
        if data is None:
            data = load_data(cfg.data, pick_device(cfg.device), progress=progress)
        print(f"[{label}] training {tcfg.model} (width {tcfg.width}) for {tcfg.epochs} epochs "
              f"on {data.name}: {len(data.train)} train / {len(data.val)} val / "
              f"{len(data.test)} test images", flush=True)
        result = train(tcfg, resume=run.last.exists(), progress=progress, data=data,
                       on_epoch=lambda r, label=label: print(f"[{label}] {epoch_line(r)}",
                                                              flush=True))
        histories[label] = result.history
        print(f"[{label}] checkpoints in {run.ckpt_dir}", flush=True)
    return histories


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp demo`` to the CLI."""
    p = sub.add_parser("demo", help="train AT and AT-AWP side by side on real CIFAR-10",
                       description=__doc__)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(p, DemoConfig)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from awp.checkpoint import atomic_write_text

    cfg = dataclass_from_arguments(DemoConfig, args)
    out = Path(cfg.out)
    saved = out / "demo_config.json"
    if saved.exists() and json.loads(saved.read_text()) != to_dict(cfg):
        raise ValueError(f"{out} holds a demo with other settings ({saved}); pass another "
                         f"--out or the same settings")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(to_dict(cfg), indent=2) + "\n")
    histories = run_training(cfg, progress=not args.no_progress)
    print("\nsummary (last epoch):")
    for label, hist in histories.items():
        r = hist[-1]
        print(f"  {label:7s} test natural {r['test_nat_acc']:.3f}  test PGD-{cfg.eval_steps} "
              f"{r['test_robust_acc']:.3f}  train PGD-{cfg.eval_steps} "
              f"{r['train_robust_acc']:.3f}  -> {Path(cfg.out)}")
    return 0
