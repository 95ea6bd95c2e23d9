"""Optional dependencies: each is imported where it is needed, through :func:`require`.

The core runs on torch, numpy and scipy alone. A feature that needs more (the original
AutoAttack, TensorBoard event files, ParaView files, interactive figures, the RobustBench zoo,
timm and transformers models, safetensors files) imports its package when it is used, and a
missing one is one :class:`MissingDependencyError` that names the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# package to import -> (extra of awp-landscape that brings it, the PyPI name)
EXTRAS: dict[str, tuple[str, str]] = {
    "pyautoattack": ("autoattack", "pyautoattack"),
    "torchattacks": ("autoattack", "torchattacks"),
    "torch.utils.tensorboard": ("tensorboard", "tensorboard"),
    "pyevtk.vtk": ("viz", "pyevtk"),
    "plotly.graph_objects": ("viz", "plotly"),
    "plotly.subplots": ("viz", "plotly"),
    "plotly.offline": ("viz", "plotly"),
    "robustbench": ("robustbench", "robustbench"),
    "timm": ("timm", "timm"),
    "transformers": ("hf", "transformers"),
    "safetensors.torch": ("safetensors", "safetensors"),
    "submitit": ("cluster", "submitit"),
}


class MissingDependencyError(ImportError):
    """An optional dependency is needed; the message says how to install it."""


def require(module: str, *, purpose: str) -> ModuleType:
    """Import the optional ``module`` (a key of :data:`EXTRAS`).

    Args:
        module: the module to import.
        purpose: what needs it, for the message (e.g. ``"--tensorboard"``).

    Raises:
        MissingDependencyError: naming the package and the extra that installs it.
    """
    extra, package = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the optional package {package}, which is not installed: "
            f"pip install 'awp-landscape[{extra}]' (or pip install {package})"
        ) from err
