"""Model zoo: PreAct ResNet-18, WideResNet, VGG-19-BN and a tiny CNN, built from a ModelSpec.

Every model takes images in [0,1] of shape (N, 3, H, W) and normalizes them as its first step
with non-persistent ``mean``/``std`` buffers, so attacks work in pixel space and state_dict keys
match the official AWP code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from awp.data import CIFAR10_MEAN, CIFAR10_STD
from awp.model_config import MODEL_NAMES, ModelConfig
from awp.model_config import check_size as _check_size
from awp.models._common import check_mean_std, scale_channels
from awp.models.preact_resnet import PreActResNet, PreActResNet18
from awp.models.small_cnn import SmallCNN
from awp.models.vgg import VGG19
from awp.models.wideresnet import WideResNet

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
