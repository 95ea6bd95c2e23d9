"""``awp gap``: the robust generalization gap of many checkpoints, resumable and sharded."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.gap import GapConfig, robust_gap, subset
from analysis.store import SampleStore, run_units
from awp import distributed
from awp.config import to_dict
from awp.io import atomic_write_set, csv_text, json_text, sha256_file
from awp_landscape.commands.common import out_folder
from awp_landscape.commands.gap_parser import register as register
from awp_landscape.console import format_table, say
from awp_landscape.flags import dataclass_from_arguments
from awp_landscape.inputs import Inputs, Sources, held_inputs


def _settings(cfg: GapConfig, inputs: Inputs) -> dict[str, Any]:
    return {"gap": to_dict(cfg), "dataset": inputs.dataset, "data_root": inputs.data_root}


def gap_rows(
    checkpoints: Sequence[Path], *, cfg: GapConfig, out: Path, inputs: Inputs, progress: bool
) -> list[dict[str, Any]]:
    """Gap rows of the checkpoints (resumable, sharded); every rank gets them, in order."""
    ctx = distributed.current()
    order = [sha256_file(p) for p in checkpoints]
    shas = dict(zip(order, checkpoints))
    store = SampleStore(out / "gap", meta=_settings(cfg, inputs), name="gap", rank=ctx.rank)

    def compute(sha: str) -> dict[str, Any]:
        loaded = inputs.load(shas[sha])
        xtr, ytr = subset(loaded.data.train, cfg.n_train, seed=cfg.subset_seed, flag="--n-train")
        xte, yte = subset(loaded.data.test, cfg.n_test, seed=cfg.subset_seed, flag="--n-test")
        rec = robust_gap(
            loaded.model,
            xtr,
            ytr,
            xte,
            yte,
            attack=cfg.attack,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
        return {
            **loaded.identity(),
            "dataset": loaded.data_cfg.dataset,
            "attack": cfg.attack.describe(),
            **dataclasses.asdict(rec),
        }

    records = run_units(
        list(dict.fromkeys(order)), compute, store=store, progress=progress, desc="checkpoints"
    )
    return [records[sha] for sha in order]


def measure_gap(
    checkpoints: Sequence[Path],
    cfg: GapConfig,
    *,
    out: Path,
    sources: Sources = Sources(),
) -> list[dict[str, Any]]:
    """``awp gap`` as a function: the rows of ``checkpoints``; ``gap.json``/``gap.csv`` in
    ``out`` hold every checkpoint measured there with these settings."""
    cleans = [out / "gap", out / "gap.json", out / "gap.csv"]
    held = held_inputs(checkpoints, out=out, lock="gap", cleans=cleans, sources=sources)
    with held as (inputs, ctx):
        rows = gap_rows(
            checkpoints, cfg=cfg, out=out, inputs=inputs, progress=sources.progress and ctx.is_main
        )
        distributed.barrier()
        if ctx.is_main:
            meta = _settings(cfg, inputs)
            every = SampleStore(out / "gap", meta=meta, name="gap").load()
            order = [r["sha256"] for r in rows] + sorted(set(every) - {r["sha256"] for r in rows})
            table = [every[s] for s in order]
            atomic_write_set(
                {
                    out / "gap.json": json_text({"settings": meta, "rows": table}),
                    out / "gap.csv": csv_text(table),
                }
            )
            say(f"results: {out} (gap.json, gap.csv; {len(table)} checkpoints)")
        return rows


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write gap.json and gap.csv."""
    cfg = dataclass_from_arguments(GapConfig, args)
    out = out_folder(args.out, args.checkpoints)
    rows = measure_gap(
        args.checkpoints,
        cfg,
        out=out,
        sources=Sources.from_args(args),
    )
    if distributed.env_rank() != 0:
        return 0
    say(f"robust generalization gap ({cfg.attack.describe()}, eval mode, seed {cfg.seed})")
    cols = ("run", "method", "epoch", "train_robust_acc", "test_robust_acc", "gap", "loss_gap")
    say(format_table([{c: r[c] for c in cols} for r in rows]))
    return 0
