"""Robustness to post-training weight quantization of the final checkpoints (8, 6 and 4 bits,
symmetric per channel; natural and PGD-20 accuracy with the attack regenerated on every
quantized model): ``analysis/quantize.json``.

Resumable per checkpoint: a rerun keeps the rows of a checkpoint whose bytes (sha256) and
settings are unchanged. The test subset has the gap's size (``gap_n``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.quantize import FLOAT_BITS, QuantizeConfig, quantized_accuracy
from awp.config import to_dict
from awp.data import capped_notice, fixed_subset
from awp.io import read_json, sha256_file, write_json
from awp_landscape.stages.base import Context, ReportSection, Stage, json_reader

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FILE = "quantize.json"


def config(plan: Any) -> QuantizeConfig:
    return QuantizeConfig(n_test=plan.gap_n)


def run(ctx: Context) -> None:
    cfg = config(ctx.plan)
    path = ctx.path(STAGE)
    settings = to_dict(cfg)
    saved = read_json(path) if path.exists() else {}
    rows = saved.get("rows", []) if saved.get("settings") == settings else []
    inputs = ctx.inputs()
    for label, ckpt in zip(ctx.labels, ctx.last):
        sha = sha256_file(ckpt)  # a finished checkpoint is skipped before it is loaded
        if any(r["sha256"] == sha and r["label"] == label for r in rows):
            continue
        loaded = inputs.load(ckpt)
        test = loaded.data.test
        n = capped_notice(cfg.n_test, len(test), flag="--gap-n")
        idx = fixed_subset(len(test), n, seed=cfg.seed).to(test.x.device)
        x, y = test.x[idx], test.y[idx]
        ctx.log(f"[{label}] quantized to {', '.join(map(str, cfg.bits))} bits, {len(y)} images")
        rows = [r for r in rows if r["label"] != label]
        epoch = loaded.ckpt.get("epoch") if loaded.ckpt else None
        names = {"label": label, "sha256": loaded.sha256, "epoch": epoch}
        for r in quantized_accuracy(loaded.model, x, y, cfg):
            rows.append({**names, "attack": cfg.attack.describe(), **r})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"settings": settings, "rows": rows})  # after each checkpoint


read = json_reader((FILE,))


def _row(folder: Path, method: str, bits: int) -> dict[str, Any] | None:
    rows = [r for r in STAGE.read_seed(folder).get("rows", [])
            if r["label"] == method and r["bits"] == bits]  # fmt: skip
    return rows[0] if rows else None


def _robust_at(bits: int):
    def get(folder: Path, method: str) -> float | None:
        r = _row(folder, method, bits)
        return None if r is None else float(r["robust_acc"])

    return get


def _robust_drop(bits: int):
    def get(folder: Path, method: str) -> float | None:
        full, low = _row(folder, method, FLOAT_BITS), _row(folder, method, bits)
        return None if full is None or low is None else full["robust_acc"] - low["robust_acc"]

    return get


def measures(plan: Any) -> list[tuple[str, Any]]:
    low = min(config(plan).bits)
    return [
        (f"robust accuracy with {low}-bit weights (PGD-20, attack on the quantized model)",
         _robust_at(low)),
        (f"robust accuracy lost by {low}-bit weights (float minus quantized)", _robust_drop(low)),
    ]  # fmt: skip


def section(res: Results) -> Section:
    from figures.html import FigureBlock, Section, Table
    from figures.quantize import plot_quantization

    q = res["quantize"]
    rows = q["rows"]
    cfg = q.get("settings", {})
    s = Section("Weight quantization")
    s.paragraphs.append(
        "Every conv and linear weight quantized after training, symmetrically per output "
        f"channel to {', '.join(map(str, cfg.get('bits', [])))} bits (step max|w_c| / "
        "(2^(b-1) - 1)); natural and robust accuracy of each quantized model on "
        f"{rows[0]['n']} test images, the attack ({rows[0]['attack']}) regenerated on the "
        "quantized model. bits 32: the float weights. One run per method and one subset: no "
        "interval."
    )
    cols = ["label", "bits", "natural_acc", "robust_acc", "robust_loss", "weight_error"]
    s.tables.append(Table(rows, columns=cols, caption="Accuracy of the quantized models"))
    s.figures.append(
        FigureBlock.from_figure(
            plot_quantization(rows, float_bits=FLOAT_BITS),
            "Natural (left) and robust (right) accuracy against the weights' bit width.",
            "quantization",
        )
    )
    return s


STAGE = Stage(
    name="quantize",
    heading="robustness to weight quantization (8, 6, 4 bits)",
    files=(FILE,),
    run=run,
    read=read,
    sections=(
        ReportSection(
            "Weight quantization",
            lambda r: r["quantize"].get("rows"),
            section,
            "analysis/quantize.json (awp demo's quantize stage)",
        ),
    ),
    measures=measures,
)
