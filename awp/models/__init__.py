"""Model zoo: PreAct ResNet-18, WideResNet, VGG-19-BN and a tiny CNN, built from a ModelSpec.

Every model takes images in [0,1] of shape (N, 3, H, W) and normalizes them as its first step
with non-persistent ``mean``/``std`` buffers, so attacks work in pixel space and state_dict keys
match the official AWP code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from awp.config import check_bounds, check_choice, opt
from awp.data import CIFAR10_MEAN, CIFAR10_STD
from awp.models._common import check_mean_std, scale_channels
from awp.models.preact_resnet import PreActResNet, PreActResNet18
from awp.models.small_cnn import SmallCNN
from awp.models.vgg import VGG19
from awp.models.wideresnet import WideResNet

MODEL_NAMES: tuple[str, ...] = ("preactresnet18", "wideresnet", "vgg19", "smallcnn")

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MODEL_NAMES",
    "ModelConfig",
    "ModelSpec",
    "PreActResNet",
    "PreActResNet18",
    "SmallCNN",
    "VGG19",
    "WideResNet",
    "build_model",
    "scale_channels",
]


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
        _check_size(self.name, self.width, self.depth, self.widen_factor)
        object.__setattr__(self, "width", float(self.width))

    def spec(
        self,
        num_classes: int,
        mean: tuple[float, ...] | None = CIFAR10_MEAN,
        std: tuple[float, ...] | None = CIFAR10_STD,
    ) -> ModelSpec:
        """The full :class:`ModelSpec` of this architecture for the data's classes and input."""
        return ModelSpec(
            name=self.name,
            num_classes=num_classes,
            width=self.width,
            depth=self.depth,
            widen_factor=self.widen_factor,
            mean=mean,
            std=std,
        )


def _check_size(name: str, width: float, depth: int, widen_factor: int) -> None:
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


_ARCH = ModelConfig()


@dataclass(frozen=True)
class ModelSpec:
    """Which architecture to build, at what size, with which input normalization.

    Args:
        name: one of MODEL_NAMES.
        num_classes: number of output logits, >= 2.
        width: channel multiplier, > 0; 1.0 gives the official shapes.
        depth: WideResNet depth, (depth - 4) % 6 == 0; ignored by the other models.
        widen_factor: WideResNet k, >= 1; ignored by the other models.
        mean: per-channel mean of the [0,1] input, length 3, or None for no normalization
            (some official checkpoints, e.g. TRADES-AWP, take raw [0,1] input).
        std: per-channel std, length 3, each > 0, or None together with mean.
    """

    name: str = _ARCH.name
    num_classes: int = 10
    width: float = _ARCH.width
    depth: int = _ARCH.depth
    widen_factor: int = _ARCH.widen_factor
    mean: tuple[float, ...] | None = CIFAR10_MEAN
    std: tuple[float, ...] | None = CIFAR10_STD

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"unknown model name {self.name!r}; choose one of {MODEL_NAMES}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise ValueError(f"num_classes must be an integer, got {self.num_classes!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        _check_size(self.name, self.width, self.depth, self.widen_factor)
        # Lists (e.g. from JSON) become tuples so that specs compare equal and stay hashable.
        mean, std = check_mean_std(self.mean, self.std)
        object.__setattr__(self, "width", float(self.width))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def architecture(self) -> ModelConfig:
        """The user's choice this spec was built from (without classes and normalization)."""
        return ModelConfig(self.name, self.width, self.depth, self.widen_factor)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the model a spec describes, freshly initialized, in training mode, on the CPU.

    Args:
        spec: architecture, size and input normalization.

    Returns:
        The model; ``model.spec`` holds ``spec`` so checkpoints can record how to rebuild it.
    """
    if not isinstance(spec, ModelSpec):
        raise ValueError(
            f"build_model takes a ModelSpec, got {type(spec).__name__}; "
            "use build_model(ModelSpec(name=...))"
        )
    common = {"width": spec.width, "mean": spec.mean, "std": spec.std}
    model: nn.Module
    if spec.name == "preactresnet18":
        model = PreActResNet18(spec.num_classes, **common)
    elif spec.name == "wideresnet":
        model = WideResNet(spec.depth, spec.num_classes, spec.widen_factor, **common)
    elif spec.name == "vgg19":
        model = VGG19(spec.num_classes, **common)
    elif spec.name == "smallcnn":
        model = SmallCNN(spec.num_classes, **common)
    else:  # unreachable: __post_init__ checks the name
        raise ValueError(f"unknown model name {spec.name!r}; choose one of {MODEL_NAMES}")
    model.spec = spec
    return model
