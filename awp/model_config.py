"""The architecture a user chooses (:class:`ModelConfig`), apart from the models themselves.

This module imports no torch, so that the command line's parsers (``awp CMD --help``) can be
built from the config dataclasses alone; :mod:`awp.models` re-exports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from awp.config import check_bounds, check_choice, opt

if TYPE_CHECKING:
    from awp.models import ModelSpec

MODEL_NAMES: tuple[str, ...] = ("preactresnet18", "wideresnet", "vgg19", "smallcnn")
_CIFAR10 = "cifar10"  # spec()'s default normalization: CIFAR-10's mean and std


@dataclass(frozen=True)
class ModelConfig:
    """The architecture a user chooses: which model and at what size.

    The number of classes and the input normalization come from the data (see
    :meth:`ModelSpec.build_spec`), so they are not part of this choice.
    """

    name: str = opt(
        "preactresnet18",
        "architecture: preactresnet18 | wideresnet | vgg19 | smallcnn",
        flag="model",
    )
    width: float = opt(1.0, "channel width multiplier (1.0 = the paper's model)", bounds=(0, 64))
    depth: int = opt(34, "WideResNet depth (34, 28, ...)", bounds=(1, 1000))
    widen_factor: int = opt(10, "WideResNet widen factor", bounds=(1, 64))

    def __post_init__(self) -> None:
        check_bounds(self)
        check_choice(self.name, MODEL_NAMES, "model name")
        check_size(self.name, self.width, self.depth, self.widen_factor)
        object.__setattr__(self, "width", float(self.width))

    def spec(
        self,
        num_classes: int,
        mean: tuple[float, ...] | None | str = _CIFAR10,
        std: tuple[float, ...] | None | str = _CIFAR10,
    ) -> ModelSpec:
        """The full :class:`ModelSpec` of this architecture for the data's classes and input
        (mean and std: CIFAR-10's unless given; None: the model does not normalize)."""
        # Imported here: both import torch, and this module must not (`awp CMD --help`).
        from awp.data import CIFAR10_MEAN, CIFAR10_STD
        from awp.models import ModelSpec

        mean = CIFAR10_MEAN if isinstance(mean, str) else mean
        std = CIFAR10_STD if isinstance(std, str) else std
        return ModelSpec(
            name=self.name,
            num_classes=num_classes,
            width=self.width,
            depth=self.depth,
            widen_factor=self.widen_factor,
            mean=mean,
            std=std,
        )


def check_size(name: str, width: float, depth: int, widen_factor: int) -> None:
    for field, value in (("depth", depth), ("widen_factor", widen_factor)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{field} must be an integer, got {value!r}")
    if (
        isinstance(width, bool)
        or not isinstance(width, int | float)
        or not (math.isfinite(width) and width > 0)
    ):
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    if name == "wideresnet":
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(
                f"WideResNet depth must satisfy (depth - 4) % 6 == 0 and depth >= 10 "
                f"(e.g. 28, 34), got depth={depth}"
            )
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
