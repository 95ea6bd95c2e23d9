"""Mode connectivity of two checkpoints A and B, robust and natural: ``awp connect A B``, and the
demo's connectivity of its two final checkpoints (``analysis/connect/connect.json`` and .h5).

The straight line from A to B and a quadratic Bezier curve whose middle point is trained
(:mod:`analysis.connect`), evaluated at ``--points`` values of t with BatchNorm re-estimated and
the attack regenerated at every point; the barriers, an h5 file and a figure:

    awp connect runs/at/checkpoints/last.pt runs/at_awp/checkpoints/last.pt --out connect/at_awp
    awp connect A.pt B.pt --no-curve                 # the straight line only
    awp connect A.pt B.pt --objective clean --epochs 20
    torchrun --nproc_per_node 4 -m awp_landscape connect A.pt B.pt ...   # points sharded

Resumable: the curve's state is saved after every epoch (``curve.pt``) and every evaluated point
is a unit of ``units/`` (:func:`analysis.store.run_units`, sharded across torchrun ranks); a
rerun with the same settings continues where a killed one stopped. The curve is trained on
rank 0 (one process); the other ranks wait for it, then share the points.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.config import ConnectConfig
from awp_landscape.measures.base import Context, FigureSpec, Measure, ReportSection

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from analysis.connect import CurveState
    from awp_landscape.inputs import Loaded, Sources
    from awp_landscape.results import Results
    from figures.html import Section

FILE = "connect/connect.json"


def _split(c: dict[str, Any]) -> str:
    return "test" if c["settings"]["connect"]["n_test"] else "train"


def _plot(c: dict[str, Any]) -> Figure | None:
    from figures.connect import plot_connect

    if not c:
        return None
    title = f"{c['a']['label']} -> {c['b']['label']} ({c['attack']})"
    return plot_connect(c["paths"], split=_split(c), title=title)


class Connect(Measure):
    name = "connect"
    heading = "mode connectivity: the line and a trained curve from AT to AT-AWP"
    command = "connect"
    summary = "mode connectivity of two checkpoints: the line, a trained curve, the barriers"
    files = (FILE, "connect.json")
    figure_specs = (
        FigureSpec("connect", _plot, "Loss and accuracy along the paths from A (t=0) to B (t=1)."),
    )

    # -- the command line ---------------------------------------------------------------
    def register(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        from awp_landscape.checkpoint_flags import add_checkpoint_arguments
        from awp_landscape.flags import add_dataclass_arguments, add_run_arguments

        p = self.parser(
            sub,
            "Natural and robust loss and accuracy along the straight line from A to B and along "
            "a quadratic Bezier curve whose middle point is trained (robust or clean objective), "
            "BatchNorm re-estimated and the attack regenerated at every point; the barrier (max "
            "along the path minus the mean of the ends) with its t. Writes connect.h5, "
            "connect.json and a figure into --out; resumable, points sharded under torchrun.",
        )
        p.add_argument("checkpoints", nargs=2, type=Path, help="the two ends A and B (.pt)")
        p.add_argument("--labels", nargs=2, default=None, help="names of A and B")
        add_dataclass_arguments(p, ConnectConfig)
        add_checkpoint_arguments(p, dataset_help="dataset (default: A's)")
        add_run_arguments(
            p,
            out_help="results folder (default: <run>/analysis/connect when A and B come from one "
            "run folder; required otherwise)",
        )
        p.add_argument(
            "--formats",
            nargs="+",
            default=["png", "pdf"],
            choices=("png", "pdf", "svg"),
            help="figure file formats: png | pdf | svg (default: png pdf)",
        )
        return p

    def run_command(self, args: argparse.Namespace) -> int:
        from awp import distributed
        from awp_landscape.console import format_table, say
        from awp_landscape.flags import dataclass_from_arguments
        from awp_landscape.inputs import Sources, out_folder
        from figures.style import save_figure

        out = out_folder(args.out, list(args.checkpoints), under="connect")
        cfg = dataclass_from_arguments(ConnectConfig, args)
        result = connect(
            list(args.checkpoints),
            cfg,
            out=out,
            labels=args.labels,
            sources=Sources.from_args(args),
        )
        if distributed.env_rank() != 0:
            return 0
        written = save_figure(_plot(result), out / "connect", args.formats)
        split = _split(result)
        rows = [
            {"path": r["path"], "metric": r["metric"], "barrier": r["barrier"], "at t": r["t"]}
            for r in result["barriers"]
            if r["metric"].startswith(split)
        ]
        a, b = result["a"]["label"], result["b"]["label"]
        say(f"mode connectivity {a} -> {b} ({result['attack']})")
        say(format_table(rows))
        say(f"saved {out / 'connect.h5'}, connect.json, {', '.join(p.name for p in written)}")
        return 0

    # -- the pipeline ---------------------------------------------------------------------
    def plan_config(self, plan: Any) -> ConnectConfig:
        from awp_landscape.measures.base import analysis_attack

        # Small on purpose: 5 points per path, the curve trained for 2 epochs on 512 training
        # images with the analysis attack's PGD, evaluated on the landscape's test subset.
        steps = plan.analysis_steps
        return ConnectConfig(
            points=5,
            epochs=2,
            batch_size=32,
            n_fit=512,
            train_steps=steps,
            n_test=plan.landscape_n,
            n_bn=plan.trajectory_bn,
            attack=analysis_attack(plan),
        )

    def run(self, ctx: Context) -> None:
        from figures.style import save_figure

        if len(ctx.last) != 2:
            ctx.log(f"skipped: connectivity joins two runs, these are {len(ctx.last)}")
            return
        out = self.path(ctx).parent
        result = connect(
            ctx.last, self.plan_config(ctx.plan), out=out, labels=ctx.labels, sources=ctx.sources()
        )
        if ctx.figures:
            save_figure(_plot(result), out / "connect")

    def read(self, folder: Path) -> dict[str, Any]:
        from awp_landscape.measures.base import json_table

        return json_table(folder, self.files)

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        from figures.html import Section, Table

        c = res[self.name]
        a, b = c["a"]["label"], c["b"]["label"]
        s = Section(f"Mode connectivity: {a} to {b}")
        cfg = c["settings"]["connect"]
        training = c.get("curve_settings") or {}
        s.paragraphs.append(
            f"Natural and robust ({c['attack']}, regenerated on every model) loss and accuracy "
            f"at {cfg['points']} points of the straight line from {a} to {b} and of a quadratic "
            f"Bezier curve whose middle point was trained for {training.get('epochs', '?')} "
            f"epoch(s) on the {training.get('objective', '?')} loss, t uniform per batch; "
            "BatchNorm statistics re-estimated at every point. Barrier: the maximum along the "
            "path minus the mean of the ends (for an accuracy, the drop below the ends' mean)."
        )
        split = _split(c)
        by = {(r["path"], r["metric"]): r for r in c["barriers"]}
        line, curve = by.get(("line", f"{split}_adv_loss")), by.get(("curve", f"{split}_adv_loss"))
        if line and curve:
            word = "lower" if curve["barrier"] < line["barrier"] else "NOT lower"
            s.paragraphs.append(
                f"The trained curve's robust-loss barrier is {word} than the straight line's "
                f"({curve['barrier']:.4g} at t={curve['t']:.2g} vs {line['barrier']:.4g} at "
                f"t={line['t']:.2g}; one pair, one evaluation subset: no interval)."
            )
        rows = [
            {"path": r["path"], "metric": r["metric"], "barrier": r["barrier"], "t": r["t"]}
            for r in c["barriers"]
            if r["metric"].startswith(split)
        ]
        s.tables.append(Table(rows, columns=["path", "metric", "barrier", "t"], caption="Barriers"))
        s.figures += self.figure_blocks(res)
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Mode connectivity",
                lambda r: r[self.name],
                self.section,
                "analysis/connect/connect.json (awp connect)",
            ),
        )


CURVE_FORMAT = "awp-landscape/curve"
# Settings the curve's training depends on (the evaluation's may change without retraining).
TRAINING = ("objective", "epochs", "batch_size", "lr", "schedule", "momentum", "weight_decay")
TRAINING += ("augment", "train_steps", "train_step_size", "n_fit", "seed", "attack")
_TRAINING_ONLY = tuple(k for k in TRAINING if k not in ("seed", "attack")) + ("curve",)


def _ends(a: Loaded, b: Loaded) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from awp_landscape.console import CLIError
    from awp_landscape.inputs import same_model

    if not same_model(a, b):
        raise CLIError(
            f"cannot connect {a.path} and {b.path}: different models ({a.spec} vs {b.spec})"
        )
    import torch

    a_state, b_state = (
        {n: p.detach().clone() for n, p in loaded.model.named_parameters()} for loaded in (a, b)
    )
    if a.sha256 == b.sha256 or all(torch.equal(a_state[k], b_state[k]) for k in a_state):
        same = (
            "are the same file"
            if Path(a.path).resolve() == Path(b.path).resolve()
            else "are byte-identical"
            if a.sha256 == b.sha256
            else "hold the same weights"
        )
        raise CLIError(
            f"cannot connect {a.path} and {b.path}: they {same}, so every path between them is "
            "one point and every barrier 0; give two different checkpoints"
        )
    return a_state, b_state


def _curve(
    path: Path, cfg: ConnectConfig, meta: dict[str, Any], a: Loaded, ends, *, progress: bool
) -> CurveState:
    """Train (or resume, or read) the curve on rank 0; every rank returns the final state."""
    from analysis.connect import CurveState, train_curve
    from awp import distributed
    from awp.checkpoint import safe_torch_load
    from awp.config import check_same_settings
    from awp.io import atomic_torch_save
    from awp.progress import progress_bar
    from awp_landscape.console import CLIError

    ctx = distributed.current()
    error: BaseException | None = None
    if ctx.is_main:
        try:
            start = None
            if path.exists():
                saved = safe_torch_load(path, what="curve state")
                if saved.get("format") != CURVE_FORMAT:
                    raise CLIError(f"{path} is not a curve state; move it away or use --out")
                check_same_settings(
                    saved["meta"],
                    meta,
                    where=f"cannot resume {path}: it was trained with other settings",
                    fix="Use the same settings, or another --out.",
                    saved_as="in the file",
                    error=CLIError,
                )
                start = CurveState(saved["theta"], saved["optimizer"], int(saved["epoch"]))
            if start is None or start.epoch < cfg.epochs:
                n = len(a.data.train) if not cfg.n_fit else min(cfg.n_fit, len(a.data.train))
                total = (cfg.epochs - (start.epoch if start else 0)) * (n // cfg.batch_size)
                bar = progress_bar(total=total * cfg.batch_size, desc="curve", enabled=progress)

                def save(state: CurveState) -> None:
                    atomic_torch_save(
                        {
                            "format": CURVE_FORMAT,
                            "meta": meta,
                            "theta": {k: v.cpu() for k, v in state.theta.items()},
                            "optimizer": state.optimizer,
                            "epoch": state.epoch,
                        },
                        path,
                    )

                with bar:
                    train_curve(
                        a.model,
                        *ends,
                        a.data.train.x[:n],
                        a.data.train.y[:n],
                        cfg,
                        start=start,
                        on_epoch=save,
                        on_batch=bar.update,
                    )
                if not path.exists():  # zero epochs: theta = (A + B) / 2, still a curve
                    mid = {k: (ends[0][k] + ends[1][k]) / 2 for k in ends[0]}
                    save(CurveState(mid, None, 0))
        except BaseException as err:  # reported on every rank by agree()
            error = err
    distributed.agree(error)
    distributed.barrier()
    saved = safe_torch_load(path, what="curve state")
    device = next(a.model.parameters()).device
    theta = {k: v.to(device) for k, v in saved["theta"].items()}
    return CurveState(theta, None, int(saved["epoch"]))


def connect(
    checkpoints: list[Path],
    cfg: ConnectConfig,
    *,
    out: Path,
    labels: list[str] | None = None,
    sources: Sources | None = None,
) -> dict[str, Any]:
    """``awp connect`` as a function: the records along each path and the barriers (every
    rank); rank 0 writes ``connect.h5`` and ``connect.json`` in ``out``."""
    from dataclasses import asdict

    from analysis.connect import PATHS, barriers, point_key, point_metrics
    from analysis.store import SampleStore, UnitKey, run_units
    from awp.config import to_dict
    from awp.io import sha256_file, write_json
    from awp.modes import batchnorms, compiled_batchnorm
    from awp_landscape.console import say
    from awp_landscape.inputs import Sources, default_label, held_inputs
    from landscape.surface import bn_images, make_evalsets

    sources = sources or Sources()
    cleans = [out / "units", out / "curve.pt", out / "connect.h5", out / "connect.json"]
    held = held_inputs(checkpoints, out=out, lock="connect", cleans=cleans, sources=sources)
    with held as (inputs, ctx):
        progress = sources.progress and ctx.is_main
        a, b = (inputs.load(p) for p in checkpoints)
        ends = _ends(a, b)
        if ctx.is_main and not batchnorms(a.model) and compiled_batchnorm(a.model):
            say(
                "awp connect: note: the BatchNorm of this model is compiled (TorchScript or "
                "torch.export), so its statistics cannot be re-estimated at the path's points: "
                f"every point uses {a.path}'s; load the model as a module (py:, torchvision:, "
                "timm:, hf:) to re-estimate them"
            )
        names = labels or [default_label(p) for p in checkpoints]
        evalsets = make_evalsets(
            a.data, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.subset_seed
        )
        bn_x = bn_images(a.data, n=cfg.n_bn, seed=cfg.subset_seed)
        # The points depend on the evaluation's settings only (a line measured with --no-curve
        # is reused when the curve is added); the curve's on its training settings too.
        evaluation = {k: v for k, v in to_dict(cfg).items() if k not in _TRAINING_ONLY}
        meta = {
            "connect": evaluation,
            "a_sha256": a.sha256,
            "b_sha256": b.sha256,
            "dataset": to_dict(a.data_cfg) if a.data_cfg else None,
        }
        curve: CurveState | None = None
        train_meta: dict[str, Any] = {}
        if cfg.curve:
            train_meta = {**meta, "connect": {k: to_dict(cfg)[k] for k in TRAINING}}
            curve = _curve(out / "curve.pt", cfg, train_meta, a, ends, progress=progress)
        paths = {p: [] for p in PATHS if p == "line" or curve is not None}
        for path in paths:
            path_meta = dict(meta)
            if path == "curve":
                path_meta["curve_sha256"] = sha256_file(out / "curve.pt")
            store = SampleStore(out / "units", meta=path_meta, name=path, rank=ctx.rank)
            mids = (ends[0], curve.theta if curve else None, ends[1])

            def compute(key: str, path=path, mids=mids) -> dict[str, float]:
                t = UnitKey.parse(key).float("t")
                return point_metrics(
                    a.model,
                    mids,
                    path,
                    t,
                    evalsets,
                    bn_x=bn_x,
                    attack=cfg.attack,
                    seed=cfg.seed,
                    batch_size=cfg.eval_batch_size,
                )

            keys = [point_key(path, t) for t in cfg.ts]
            records = run_units(keys, compute, store=store, progress=progress, desc=path)
            paths[path] = [records[k] for k in keys]
        result = {
            "a": {**a.identity(), "label": names[0]},
            "b": {**b.identity(), "label": names[1]},
            "settings": meta,
            "curve_settings": train_meta.get("connect"),
            "attack": cfg.attack.describe(),
            "paths": paths,
            "barriers": [asdict(r) for p, rows in paths.items() for r in barriers(p, rows)],
        }
        if ctx.is_main:
            write_json(out / "connect.json", result)
            write_connect_h5(out / "connect.h5", result)
        return result


def write_connect_h5(path: Path, result: dict[str, Any]) -> Path:
    """One group per path (``t`` and every metric, (points,) float64), the barriers and the
    settings as JSON attributes; written atomically."""
    import json

    import h5py
    import numpy as np

    from awp.io import atomic_write_with

    def fill(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = "awp-landscape/connect"
            for key in ("a", "b", "settings", "barriers"):
                f.attrs[key] = json.dumps(result[key], sort_keys=True)
            f.attrs["attack"] = result["attack"]
            for name, rows in result["paths"].items():
                g = f.create_group(name)
                for m in rows[0]:
                    g.create_dataset(m, data=np.array([r[m] for r in rows], dtype=np.float64))

    return atomic_write_with(path, fill)


MEASURE = Connect()
