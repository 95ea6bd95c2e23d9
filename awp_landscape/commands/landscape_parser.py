"""The flags of ``awp landscape``, built from modules that import no torch, so that
``awp landscape --help`` answers at once; :mod:`awp_landscape.commands.landscape` runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from awp_landscape.checkpoint_flags import add_checkpoint_arguments
from awp_landscape.flags import RENAMED_IN, NotedFlag, add_dataclass_arguments, explain_default
from landscape.config import EigenMapConfig, SurfaceConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp landscape``."""
    p = sub.add_parser(
        "landscape",
        help="weight loss curves/surfaces with attacks regenerated on the perturbed model",
        description=(
            "Perturb the trained weights along filter-normalized directions "
            "(theta0 + sum c_i d_i) and measure clean and adversarial loss and accuracy, "
            "crafting the attack on every perturbed model. One h5 file per checkpoint "
            "(loss-landscape's names), written point by point; --resume fills the missing "
            "points. Runs under torchrun (points sharded across ranks)."
        ),
    )
    p.add_argument(
        "checkpoints",
        nargs="*",
        type=Path,
        help="checkpoint .pt files (interp: exactly two, from the first to the second; "
        "trajectory: a training path in order, at least three, the last is theta0; or "
        "--robustbench NAME)",
    )
    p.add_argument(
        "--labels", nargs="+", default=None, help="one label per result (default: AT, AT-AWP...)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder of the LABEL.h5 files, or a .h5 file for a single result (default: "
        "<run>/analysis/landscape when the checkpoints come from one run folder)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="compute only the missing points of existing files (same checkpoint and settings)",
    )
    p.add_argument(
        "--allow-mixed",
        action="store_true",
        help="trajectory: accept checkpoints out of epoch order or from several runs (a "
        "warning says which); without it they are refused, as theta0 is the last one given",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(p, SurfaceConfig, skip=("dataset", "data_root"))
    explain_default(
        p,
        "--attack-steps",
        "PGD-10, not the PGD-20 of eval and the analyses, as the attack is crafted anew at "
        "every point of the grid (441 of a 21x21 surface, per direction and split), and the "
        "landscape compares shapes, not accuracies; write --attack-steps 20 to match them",
    )
    note_seed_meaning(p)
    add_dataclass_arguments(p.add_argument_group("curvature map"), EigenMapConfig)
    add_checkpoint_arguments(
        p, dataset_help="dataset (default: the one the checkpoint was trained on)"
    )
    p.set_defaults(func=run)


# The release whose vocabulary gave landscape's --seed to the attacks (docs/cli.md, "Renamed
# flags"); before it, --seed seeded the directions, which are now --direction-seed's.
SEED_MEANING_SINCE = RENAMED_IN


class _SeedNote(NotedFlag):
    """``--seed`` of ``awp landscape``: stores the attacks' seed and says, on stderr, that it
    no longer seeds the directions (a user of the old meaning would get other surfaces)."""

    def note(self, option_string: str | None) -> str:
        return (
            f"--seed seeds the attack's random starts since {SEED_MEANING_SINCE}; the "
            "direction's seed is --direction-seed"
        )


def note_seed_meaning(p: argparse.ArgumentParser) -> None:
    """Make ``--seed`` (already added, a plain stored value) print :class:`_SeedNote`'s note
    when it is given."""
    action = next(a for a in p._actions if "--seed" in a.option_strings)
    if type(action) is not argparse._StoreAction:
        raise TypeError(
            f"--seed is a {type(action).__name__}, not a stored value: update _SeedNote"
        )
    action.__class__ = _SeedNote


def run(args: argparse.Namespace) -> int:
    """``awp landscape``: the torch-using command, imported when it runs."""
    from awp_landscape.commands import landscape

    return landscape.run(args)
