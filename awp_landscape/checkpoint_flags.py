"""The flags of a command that reads checkpoints: the dataset, and what a checkpoint from
elsewhere does not record (its architecture and input convention), models named by a source
string (``torchvision:NAME``, ``timm:NAME``, ``py:module:factory``, ``hf:DIR``, TorchScript and
``torch.export`` files: their keyword arguments, weights and input size), and RobustBench's zoo.

This module imports no torch: the parsers of ``awp CMD --help`` are built from it.
:mod:`awp_landscape.inputs` loads what these flags name.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from awp.config import check_bounds, check_choice, opt
from awp.data_config import DataConfig
from awp.model_config import ModelConfig
from awp.zoo import DEFAULT_MODEL_DIR, THREAT_MODELS
from awp_landscape.flags import add_dataclass_arguments, dataclass_from_arguments

INPUTS = ("normalized", "raw")


@dataclass(frozen=True)
class Foreign:
    """What a checkpoint from elsewhere does not record: its architecture and input convention."""

    model: ModelConfig = opt(ModelConfig(), "architecture of a checkpoint from elsewhere")
    input: str | None = opt(
        None,
        "input convention of a checkpoint from elsewhere: normalized (the dataset's mean/std; "
        "official AT-AWP and Rice et al. checkpoints) or raw [0,1] (TRADES-AWP, RST-AWP, "
        "RobustBench)",
        shown="none: required for checkpoints from elsewhere; a model named by a source "
        "string normalizes as its source does",
    )
    model_kwargs: str = opt(
        "",
        "keyword arguments of a torchvision:/timm:/py:/hf: model, as JSON "
        """(e.g. '{"num_classes": 10}')""",
    )
    weights: str | None = opt(
        None,
        "state dict file (.pt, or .safetensors) for a torchvision:/timm:/py:/hf: model",
        shown="none: its random initialization (seeded)",
    )
    input_size: int | None = opt(
        None,
        "input size a model from elsewhere takes: inputs are resized (shorter side N/0.875) "
        "and centre-cropped to N x N inside the model, so attacks stay in pixel space",
        bounds=(1, 4096),
        shown="none: the data's own size",
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.input is not None:
            check_choice(self.input, INPUTS, "input convention")


def add_checkpoint_list(p: argparse.ArgumentParser, *, labels: bool = True) -> None:
    """The checkpoints a measuring command takes (files, or zoo names with --robustbench), and
    ``--labels`` naming them in its tables and figures."""
    p.add_argument(
        "checkpoints",
        nargs="*",
        type=Path,
        help="checkpoints (.pt), or models named by a source: torchvision:NAME, timm:NAME, "
        "py:module:factory, hf:DIR, robustbench:NAME, a TorchScript or .pt2 file "
        "(or --robustbench NAME)",
    )
    if labels:
        p.add_argument("--labels", nargs="+", help="names in tables and figures")


def add_checkpoint_arguments(p: argparse.ArgumentParser, *, dataset_help: str = "") -> None:
    """``--dataset``, ``--data-root``, ``--center-crop`` and the options of checkpoints from
    elsewhere."""
    p.add_argument(
        "--dataset",
        default=None,
        help=dataset_help
        or "dataset (default: the checkpoint's own; 'sample' for checkpoints from elsewhere)",
    )
    p.add_argument("--data-root", default=None, help="where torchvision datasets live")
    others = tuple(f.name for f in fields(DataConfig) if f.name != "center_crop")
    add_dataclass_arguments(p, DataConfig, skip=others)  # --center-crop, as training has it
    g = p.add_argument_group(
        "checkpoints from elsewhere (official AWP, Rice et al., RobustBench): their architecture "
        "and input"
    )
    add_dataclass_arguments(g, Foreign)
    z = p.add_argument_group(
        "RobustBench's zoo by name (read from --model-dir only; docs/robustbench.md lists them)"
    )
    z.add_argument(
        "--robustbench",
        nargs="+",
        default=None,
        metavar="NAME",
        help="zoo models to measure besides the checkpoint files, e.g. Wu2020Adversarial_extra "
        "(the zoo's dataset is cifar100 with --dataset cifar100, else cifar10)",
    )
    add_zoo_location(z)


def add_zoo_location(group: argparse._ArgumentGroup) -> None:
    """``--threat-model`` and ``--model-dir``: where a zoo model given by name is read from."""
    group.add_argument(
        "--threat-model", default="Linf", choices=THREAT_MODELS, help="the zoo's threat model"
    )
    group.add_argument(
        "--model-dir",
        default=DEFAULT_MODEL_DIR,
        help="RobustBench's model folder: <dir>/<dataset>/<threat model>/<name>.pt "
        f"(default: {DEFAULT_MODEL_DIR})",
    )


@dataclass(frozen=True)
class ForeignOptions:
    """What the flags say of models from elsewhere, as :class:`awp_landscape.inputs.Inputs`
    takes it: the architecture (``--model``, or None) and ``--input`` of a checkpoint from
    elsewhere; ``--model-kwargs`` (JSON), ``--weights`` and ``--input-size`` of a model named
    by a source string; where ``robustbench:NAME`` is read from."""

    arch: ModelConfig | None = None
    input: str | None = None
    model_kwargs: str = ""
    weights: str | None = None
    input_size: int | None = None
    model_dir: str = DEFAULT_MODEL_DIR
    threat_model: str = "Linf"


def foreign_from(args: argparse.Namespace) -> ForeignOptions:
    """The options of models from elsewhere that the flags give (see :class:`ForeignOptions`)."""
    foreign = dataclass_from_arguments(Foreign, args)
    return ForeignOptions(
        arch=foreign.model if getattr(args, "model", None) is not None else None,
        input=foreign.input,
        model_kwargs=foreign.model_kwargs,
        weights=foreign.weights,
        input_size=foreign.input_size,
        model_dir=getattr(args, "model_dir", DEFAULT_MODEL_DIR) or DEFAULT_MODEL_DIR,
        threat_model=getattr(args, "threat_model", "Linf") or "Linf",
    )
