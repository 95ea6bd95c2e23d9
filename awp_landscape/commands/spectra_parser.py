"""The flags of ``awp spectra``, built from modules that import no torch, so that ``awp spectra
--help`` answers at once; :mod:`awp_landscape.commands.spectra` runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.config import SpectraConfig
from awp_landscape.checkpoint_flags import add_checkpoint_arguments
from awp_landscape.commands.common import add_run_arguments
from awp_landscape.flags import add_dataclass_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp spectra``."""
    p = sub.add_parser(
        "spectra",
        help="per-layer singular values, conv operator norms (FFT), stable rank, ESD alpha",
        description="Per conv/linear layer of each checkpoint: singular values of W reshaped "
        "to (out, in*kh*kw), Frobenius and spectral norms, stable rank, a power-law fit of the "
        "eigenvalues of W^T W (MLE, x_min by the KS rule), and the conv's operator norm on its "
        "input images by FFT (exact for circular padding; the zero-padded conv the network "
        "applies is bracketed between power iteration on it and an FFT upper bound). Figures: "
        "the ESD of one layer, statistics against depth and against epoch. Finished checkpoints "
        "are kept in <out>/spectra_units and skipped when run again; torchrun splits them.",
    )
    p.add_argument(
        "checkpoints",
        nargs="*",
        type=Path,
        help="checkpoints (.pt; or --robustbench NAME) to measure",
    )
    p.add_argument("--labels", nargs="+", help="names in the legend (default: AT / AT-AWP ...)")
    add_dataclass_arguments(p, SpectraConfig)
    p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
    add_checkpoint_arguments(p, dataset_help="dataset (only for checkpoints from elsewhere)")
    add_run_arguments(
        p, out_help="results folder (default: <run>/analysis when all checkpoints are from one run)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp spectra``: the command's code, imported when it runs."""
    from awp_landscape.commands import spectra

    return spectra.run(args)
