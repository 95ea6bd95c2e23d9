"""A model named by a string: the one place that turns a source into a model to measure.

Sources (:func:`load_source`):

- a checkpoint file of ours (``runs/at/checkpoints/last.pt``), or a RobustBench file in the
  zoo's folder layout (``models/cifar10/Linf/NAME.pt``), loaded as :mod:`awp.checkpoint` does;
- ``torchvision:NAME`` (``torchvision.models.get_model(NAME, weights=None)``: random
  initialization, never a download) and ``timm:NAME`` (``timm.create_model(NAME,
  pretrained=False)``, the ``timm`` extra), built with ``num_classes`` and the keyword
  arguments given;
- ``py:package.module:factory``: any importable callable returning an ``nn.Module``, called
  with the keyword arguments given (``--model-kwargs '{"num_classes": 10}'``);
- a TorchScript file (``torch.jit.save``) or a ``torch.export`` program (``.pt2``,
  ``torch.export.save``), recognized by their contents, whenever they have parameters to
  perturb;
- ``hf:DIR``: a Hugging Face transformers image classifier saved in a local folder
  (``save_pretrained``; nothing is downloaded), its logits taken from its output; the ``hf``
  extra;
- ``robustbench:NAME``: RobustBench's zoo by name, read from ``model_dir`` in the zoo's layout
  (:mod:`awp.zoo`; never downloaded).

Weights for the built sources (``torchvision:``, ``timm:``, ``py:``, ``hf:``) come from a state
dict file (``.pt``, read with ``weights_only=True``; ``.safetensors`` with the ``safetensors``
extra), its ``module.``/``_orig_mod.``/``model.`` prefixes handled and mismatched keys listed
(:func:`awp.checkpoint.adapt_state_dict`, :func:`awp.checkpoint.load_state_dict_checked`).
Without weights, a built source's random initialization is drawn from ``seed`` (the global RNG
is left as it was), so the same string builds the same model bit for bit.

**Input convention.** Every model here takes inputs in [0, 1] (images (N, C, H, W)), so attacks
and epsilons stay in pixel space. A model from elsewhere that expects normalized or resized
inputs is wrapped in :class:`InputWrapper`, which resizes and centre-crops (ImageNet style,
when an input size is given), normalizes with the source's mean/std, calls the model and takes
the logits from its output. The wrapper holds the model itself, not a copy: its parameters are
the model's, named with the prefix ``model.`` (``model.conv1.weight``), so perturbing the
wrapper's weights perturbs the model's.

**BatchNorm.** Measures use the model's running statistics in eval mode by default, or
re-estimate them at every perturbed point (:data:`awp.modes.BN_MODES`). Re-estimation needs
BatchNorm modules: TorchScript and ``torch.export`` programs run as they were compiled
(:func:`check_bn_mode` refuses ``recompute`` for them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from awp.checkpoint import (
    CheckpointError,
    adapt_state_dict,
    check_file,
    first_nonfinite,
    load_model,
    load_state_dict_checked,
    load_weights,
    read_state_dict,
)
from awp.extras import require
from awp.io import sha256_file
from awp.modes import BN_MODES, check_bn_recomputable, model_mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet's evaluation transform: resize the shorter side to size / 0.875 (256 for 224),
# then centre-crop size x size.
CROP_FRACTION = 0.875

PREFIXES = ("torchvision:", "timm:", "py:", "hf:", "robustbench:")
SOURCE_KINDS = (
    "checkpoint",
    "torchvision",
    "timm",
    "py",
    "torchscript",
    "export",
    "hf",
    "robustbench",
)
# Built sources take weights from a file; the others carry their own.
BUILT = ("torchvision", "timm", "py", "hf")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class SourceError(ValueError):
    """A model source that cannot be used; the message names the source, the problem and the
    fix, on one line."""


# ----------------------------------------------------------------------------- input convention


@dataclass(frozen=True)
class InputConvention:
    """What a model expects of its [0, 1] inputs, applied inside :class:`InputWrapper`.

    Args:
        mean, std: per-channel normalization (``(x - mean) / std`` on dimension 1), or None
            for inputs taken as they are.
        size: ImageNet-style evaluation: resize the shorter side to ``resize`` and centre-crop
            ``size`` x ``size`` (None: the inputs' own size, nothing resized).
        resize: the shorter side before the crop (None: ``round(size / 0.875)``, 256 for 224).
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: int | None = None
    resize: int | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise SourceError("give both mean and std of the input normalization, or neither")
        if self.mean is not None and self.std is not None:
            mean = tuple(float(m) for m in self.mean)
            std = tuple(float(s) for s in self.std)
            if len(mean) != len(std) or not mean:
                raise SourceError(
                    f"mean {mean} and std {std} need one value per channel, as many of each"
                )
            if any(not s > 0 for s in std):
                raise SourceError(f"std {std} must be > 0 in every channel")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        for name in ("size", "resize"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SourceError(f"input {name} must be a positive number of pixels, got {v!r}")
        if self.resize is not None and self.size is None:
            raise SourceError("an input resize needs the crop size too (size)")
        if self.size is not None and self.resize is not None and self.resize < self.size:
            raise SourceError(
                f"input resize {self.resize} is smaller than the crop size {self.size}"
            )

    @property
    def resize_to(self) -> int | None:
        """The shorter side before the crop (None without a size)."""
        if self.size is None:
            return None
        return self.resize if self.resize is not None else round(self.size / CROP_FRACTION)

    @property
    def identity(self) -> bool:
        """True when the wrapper has nothing to do."""
        return self.mean is None and self.size is None

    def describe(self) -> str:
        parts = ["[0, 1]" if self.mean is None else f"normalized with mean {self.mean}, std "
                 f"{self.std}"]  # fmt: skip
        if self.size is not None:
            parts.append(f"resized to {self.resize_to} and centre-cropped to {self.size}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "size": self.size, "resize": self.resize}


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor as it is, ``.logits`` of an output object
    (transformers), ``["logits"]`` of a dict, the first item of a tuple or list.

    Raises:
        SourceError: nothing that looks like logits.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise SourceError(
        f"the model returned a {type(output).__name__}, with no logits tensor in it; wrap it in "
        "a module whose forward returns the logits (N, classes)"
    )


class InputWrapper(nn.Module):
    """A model from elsewhere on [0, 1] inputs: resize and centre crop, normalize, call, logits.

    The model is held, not copied: the wrapper's parameters are the model's, named
    ``model.<its own name>``; mean and std are non-persistent buffers (not in the state dict).
    Differentiable end to end, so attacks take gradients through the resize and normalization.

    Args:
        model: the model from elsewhere.
        convention: what it expects (:class:`InputConvention`).
    """

    def __init__(self, model: nn.Module, convention: InputConvention) -> None:
        super().__init__()
        self.model = model
        self.convention = convention
        if convention.mean is not None and convention.std is not None:
            shape = (1, len(convention.mean), 1, 1)
            self.register_buffer(
                "mean", torch.tensor(convention.mean).view(shape), persistent=False
            )
            self.register_buffer("std", torch.tensor(convention.std).view(shape), persistent=False)
        else:
            self.mean = self.std = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) in [0, 1]
        size = self.convention.size
        if size is not None:
            x = resize_and_crop(x, size=size, resize=self.convention.resize_to or size)
        if self.mean is not None:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return logits_of(self.model(x))

    def train(self, mode: bool = True) -> InputWrapper:
        """``nn.Module.train``, except that a ``torch.export`` program, which refuses
        ``train()``, only gets its flags set: it runs as it was exported whatever they say."""
        self.training = mode
        for child in self.children():
            try:
                child.train(mode)
            except NotImplementedError:
                for m in child.modules():
                    m.training = mode
        return self


def resize_and_crop(x: torch.Tensor, *, size: int, resize: int) -> torch.Tensor:
    """ImageNet's evaluation transform on a batch: the shorter side resized to ``resize``
    (bilinear, antialiased, as torchvision's ``Resize`` on tensors), then the centre
    ``size`` x ``size`` crop. (N, C, H, W) -> (N, C, size, size)."""
    h, w = x.shape[-2:]
    if (h, w) != (resize, resize) or h != w:
        short = min(h, w)
        new = (round(h * resize / short), round(w * resize / short))
        if new != (h, w):
            x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


# ----------------------------------------------------------------------------- the source


@dataclass(frozen=True, eq=False)
class SourceModel:
    """A model loaded from a source, ready to measure (eval mode, on the device asked for).

    Attributes:
        model: the module the measures take: inputs in [0, 1], logits out (an
            :class:`InputWrapper` around a model from elsewhere, whose parameters are
            ``model.*``; our checkpoints' models as they are).
        name: the source string as given (how result tables name it).
        kind: one of :data:`SOURCE_KINDS`.
        input: the input convention applied inside ``model``.
        num_classes: the number of outputs (None where it is not known before a forward pass).
        sha256: what identifies the weights in result tables: the file's sha256 for files, else
            a sha256 of the source string, its keyword arguments and every tensor of the state.
        weights: what loading the weights did (path, sha256, layout, stripped prefixes, ...).
        checkpoint: our checkpoint's dict (its config, epoch...), else None.
        spec: our :class:`~awp.models.ModelSpec` for our architectures, else None.
    """

    model: nn.Module
    name: str
    kind: str
    input: InputConvention
    num_classes: int | None
    sha256: str
    weights: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    spec: Any = None

    def identity(self) -> dict[str, Any]:
        """The columns that name this model in result tables."""
        return {"checkpoint": self.name, "sha256": self.sha256, "source": self.kind}


def source_kind(spec: str | os.PathLike) -> str:
    """What a source string names (:data:`SOURCE_KINDS`), by its prefix or, for a file, by its
    contents (a TorchScript archive, a ``torch.export`` program, else a checkpoint)."""
    s = str(spec)
    for p in PREFIXES:
        if s.startswith(p):
            return p[:-1]
    return file_kind(Path(s))


def is_source(spec: str | os.PathLike) -> bool:
    """True for anything other than a checkpoint file: a prefixed name, a TorchScript file or
    a ``torch.export`` program (what :func:`load_source` builds rather than unpickles)."""
    return source_kind(spec) != "checkpoint"


def file_kind(path: Path) -> str:
    """ "torchscript", "export" or "checkpoint" by the archive's entries (a missing or
    non-zip file is a "checkpoint": its own errors say what is wrong with it)."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return "export" if path.suffix == ".pt2" else "checkpoint"
    with zipfile.ZipFile(path) as z:
        entries = {n.split("/", 1)[1] if "/" in n else n for n in z.namelist()}
    if "archive_format" in entries or any(e.startswith("models/") for e in entries):
        return "export"
    if "constants.pkl" in entries or any(e.startswith("code/") for e in entries):
        return "torchscript"
    return "checkpoint"


def load_source(
    spec: str | os.PathLike,
    *,
    num_classes: int | None = None,
    weights: str | os.PathLike | None = None,
    kwargs: Mapping[str, Any] | None = None,
    input: InputConvention | None = None,
    input_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    model_dir: str | os.PathLike = "models",
    dataset: str = "cifar10",
    threat_model: str = "Linf",
) -> SourceModel:
    """Load the model a source string names (see the module docstring for the sources).

    Args:
        spec: the source: a file, or ``torchvision:NAME``, ``timm:NAME``,
            ``py:module:factory``, ``hf:DIR``, ``robustbench:NAME``.
        num_classes: outputs to build (``torchvision:``, ``timm:``) or to check (every
            source); None: the source's own.
        weights: a state dict file for a built source (``.pt``, ``.safetensors``).
        kwargs: keyword arguments of the builder (``--model-kwargs`` as a dict).
        input: the input convention (None: the source's own, see :func:`default_input`).
        input_size: an ImageNet-style resize and centre crop to this size, added to the
            convention (given or the source's own).
        seed: seed of a built source's random initialization (the global RNG is restored).
        device: where the model goes.
        model_dir, dataset, threat_model: where ``robustbench:NAME`` is read from
            (``<model_dir>/<dataset>/<threat_model>/<NAME>.pt``).

    Returns:
        :class:`SourceModel`, in eval mode.

    Raises:
        SourceError: one line naming the source, the problem and the fix (a factory that
            raises, a module that does not import, an unknown name with the nearest ones,
            a file without parameters, a folder without a config, non-finite weights,
            another number of classes).
        CheckpointError: weights that do not fit (the missing and unexpected keys listed).
        FileNotFoundError: a file that is not there (for the zoo, the path expected).
    """
    kind = source_kind(spec)
    kwargs = dict(kwargs or {})
    if input_size is not None and kind == "checkpoint":
        raise SourceError(f"{spec} records its own input convention; drop the input size")
    if weights is not None and kind not in BUILT:
        raise SourceError(
            f"{spec} carries its own weights; --weights is for torchvision:, timm:, py: and hf: "
            "sources"
        )
    if kwargs and kind not in BUILT:
        raise SourceError(
            f"{spec} is not built by a function; --model-kwargs is for torchvision:, timm:, "
            "py: and hf: sources"
        )
    if kind == "checkpoint":
        return _checkpoint(Path(spec), input, device)
    if kind == "robustbench":
        return _robustbench(
            str(spec)[len("robustbench:") :],
            model_dir=model_dir,
            dataset=dataset,
            threat_model=threat_model,
            input=input,
            input_size=input_size,
            device=device,
            num_classes=num_classes,
        )
    if kind in ("torchscript", "export"):
        model, sha = _compiled(Path(spec), kind)
        info: dict[str, Any] = {"path": str(spec), "sha256": sha, "layout": kind}
        convention = _sized(input or InputConvention(), input_size)
    else:
        with seeded(seed):
            model, own = _build(kind, str(spec), num_classes=num_classes, kwargs=kwargs)
        convention = _sized(input or own, input_size)
        info = {}
        if weights is not None:
            info = dict(load_weights_file(model, weights, source=f"weights {weights} for {spec}"))
        sha = state_sha256(model, salt=json.dumps([str(spec), kwargs, seed], sort_keys=True,
                                                  default=str))  # fmt: skip
    _check_finite(model, str(spec) if weights is None else f"weights {weights}")
    wrapped = InputWrapper(model, convention).to(device).eval()
    return SourceModel(
        model=wrapped,
        name=str(spec),
        kind=kind,
        input=convention,
        num_classes=num_classes if num_classes is not None else _outputs_of(model),
        sha256=sha,
        weights=info,
    )


def _sized(convention: InputConvention, size: int | None) -> InputConvention:
    """The convention with an ImageNet-style resize and crop to ``size`` (None: as it is)."""
    return convention if size is None else dataclasses.replace(convention, size=size)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from torch's global generator seeded with ``seed`` (random initializations), and
    give it back as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def default_input(kind: str, model: nn.Module | None = None) -> InputConvention:
    """A source's own input convention: ImageNet's mean and std for ``torchvision:``, the
    model's ``pretrained_cfg`` mean and std for ``timm:``, [0, 1] as it is for the others
    (``hf:`` reads its folder's preprocessor config)."""
    if kind == "torchvision":
        return InputConvention(IMAGENET_MEAN, IMAGENET_STD)
    if kind == "timm" and model is not None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean"), cfg.get("std")
        if mean and std:
            return InputConvention(tuple(mean), tuple(std))
        return InputConvention(IMAGENET_MEAN, IMAGENET_STD)
    return InputConvention()


# ----------------------------------------------------------------------------- builders


def _build(
    kind: str, spec: str, *, num_classes: int | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, InputConvention]:
    name = spec.split(":", 1)[1]
    if kind == "torchvision":
        return _torchvision(name, num_classes, kwargs), default_input("torchvision")
    if kind == "timm":
        model = _timm(name, num_classes, kwargs)
        return model, default_input("timm", model)
    if kind == "py":
        return _factory(spec, name, kwargs), InputConvention()
    return _hf(Path(name), num_classes, kwargs)


def _torchvision(name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        raise SourceError(f"torchvision has no model {name!r}{_nearest(name, known)}")
    if kwargs.get("weights") is not None:
        raise SourceError(
            f"torchvision:{name} is never downloaded here: drop weights= from --model-kwargs "
            "and pass the weights file with --weights"
        )
    args = {**kwargs, "weights": None}
    if num_classes is not None:
        args.setdefault("num_classes", num_classes)
    return _call(f"torchvision:{name}", torchvision.models.get_model, name, **args)


def _timm(name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
    timm = require("timm", purpose=f"timm:{name}")
    known = timm.list_models()
    if name not in known:
        raise SourceError(f"timm has no model {name!r}{_nearest(name, known)}")
    if kwargs.get("pretrained"):
        raise SourceError(
            f"timm:{name} is never downloaded here: drop pretrained from --model-kwargs and "
            "pass the weights file with --weights"
        )
    args = {**kwargs, "pretrained": False}
    if num_classes is not None:
        args.setdefault("num_classes", num_classes)
    return _call(f"timm:{name}", timm.create_model, name, **args)


def _factory(spec: str, target: str, kwargs: dict[str, Any]) -> nn.Module:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise SourceError(
            f"{spec}: write py:package.module:factory (a module path, a colon, a callable)"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an ImportError, or whatever the module raises when imported
        raise SourceError(
            f"{spec}: module {module_name} does not import ({type(err).__name__}: "
            f"{_first_line(err)}); check the module path and that it is on PYTHONPATH"
        ) from None
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            names = [n for n in dir(fn) if not n.startswith("_") and callable(getattr(fn, n))]
            raise SourceError(f"{spec}: {module_name} has no {attr!r}{_nearest(part, names)}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise SourceError(f"{spec}: {module_name}.{attr} is a {type(fn).__name__}, not callable")
    model = _call(spec, fn, **kwargs)
    return model


def _call(spec: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> nn.Module:
    """``fn(*args, **kwargs)``, a failure turned into one line naming the source."""
    try:
        out = fn(*args, **kwargs)
    except Exception as err:
        given = f" with --model-kwargs {json.dumps(kwargs, default=str)}" if kwargs else ""
        raise SourceError(
            f"{spec} failed{given}: {type(err).__name__}: {_first_line(err)}; fix the factory "
            "or its keyword arguments"
        ) from None
    if not isinstance(out, nn.Module):
        raise SourceError(
            f"{spec} returned a {type(out).__name__}, not a torch.nn.Module; make it return "
            "the model"
        )
    return out


def _hf(
    folder: Path, num_classes: int | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, InputConvention]:
    if not (folder / "config.json").is_file():
        raise SourceError(
            f"hf:{folder} has no config.json: pass a folder written by save_pretrained "
            "(config.json and the weights; nothing is downloaded here)"
        )
    transformers = require("transformers", purpose=f"hf:{folder}")
    auto = transformers.AutoModelForImageClassification
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    with _quiet_transformers(transformers):
        try:
            if has_weights:
                model = auto.from_pretrained(str(folder), local_files_only=True, **kwargs)
            else:  # a config alone: the architecture, randomly initialized
                config = transformers.AutoConfig.from_pretrained(
                    str(folder), local_files_only=True, **kwargs
                )
                model = auto.from_config(config)
        except Exception as err:
            raise SourceError(
                f"hf:{folder} did not load ({type(err).__name__}: {_first_line(err)}); it must "
                "be an image classifier saved with save_pretrained"
            ) from None
    labels = getattr(model.config, "num_labels", None)
    if num_classes is not None and labels is not None and labels != num_classes:
        raise SourceError(
            f"hf:{folder} is a {labels}-class model, but the data has {num_classes} classes: "
            "pass the dataset it was trained on, or a model with as many labels"
        )
    return model, _hf_input(folder)


def _hf_input(folder: Path) -> InputConvention:
    """The normalization (and crop size) of a folder's preprocessor_config.json, if any."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return InputConvention()
    cfg = json.loads(path.read_text())
    mean = cfg.get("image_mean") if cfg.get("do_normalize", True) else None
    std = cfg.get("image_std") if mean is not None else None
    return InputConvention(tuple(mean) if mean else None, tuple(std) if std else None)


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """No progress bars or info lines from transformers while loading (the core prints
    nothing); its settings are given back."""
    logging = transformers.utils.logging
    bars = logging.is_progress_bar_enabled()
    level = logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _compiled(path: Path, kind: str) -> tuple[nn.Module, str]:
    """A TorchScript module or a torch.export program's module, with parameters."""
    check_file(path, what="model file")
    what = "TorchScript file" if kind == "torchscript" else "torch.export program"
    try:
        if kind == "torchscript":
            with warnings.catch_warnings():  # torch deprecates TorchScript; its files still load
                warnings.filterwarnings("ignore", "`torch.jit", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        else:
            model = torch.export.load(str(path)).module()
    except Exception as err:
        raise SourceError(
            f"{what} {path} does not load ({type(err).__name__}: {_first_line(err)})"
        ) from None
    if not any(True for _ in model.parameters()):
        how = (
            "save it with torch.jit.save(torch.jit.script(model)) without torch.jit.freeze, "
            "which turns parameters into constants"
            if kind == "torchscript"
            else "export the module itself (torch.export.export(model, ...)), not a function"
        )
        raise SourceError(
            f"{what} {path} has no parameters, so there are no weights to perturb: {how}"
        )
    return model, sha256_file(path)


def _checkpoint(path: Path, input: InputConvention | None, device: Any) -> SourceModel:
    """Our checkpoint, or a RobustBench file in the zoo's layout (our architectures)."""
    from awp.zoo import zoo_model_at

    if input is not None:
        raise SourceError(
            f"{path} records its own input convention; drop the input settings (they are for "
            "models from elsewhere)"
        )
    _, info = read_state_dict(path)
    ckpt = info.get("checkpoint")
    if ckpt is not None:
        model, ckpt = load_model(path, device=device)
        spec = model.spec
        weights: dict[str, Any] = {"path": str(path), "sha256": sha256_file(path), **info}
        weights.pop("checkpoint", None)
        return SourceModel(
            model=model,
            name=str(path),
            kind="checkpoint",
            input=InputConvention(spec.mean, spec.std),
            num_classes=spec.num_classes,
            sha256=weights["sha256"],
            weights=weights,
            checkpoint=ckpt,
            spec=spec,
        )
    zoo = zoo_model_at(path)
    if zoo is None:
        raise SourceError(
            f"{path} is not an awp-landscape checkpoint ({info['layout']}): name its "
            "architecture, e.g. torchvision:resnet18 --weights FILE, py:package.module:factory "
            "--weights FILE, or --model ARCH --input raw|normalized for our architectures"
        )
    from awp.models import build_model

    model = build_model(zoo.spec)
    weights = dict(load_weights(model, path))
    return SourceModel(
        model=model.to(device).eval(),
        name=str(path),
        kind="checkpoint",
        input=InputConvention(zoo.mean, zoo.std),
        num_classes=zoo.num_classes,
        sha256=weights["sha256"],
        weights=weights,
        spec=zoo.spec,
    )


def _robustbench(
    name: str,
    *,
    model_dir: Any,
    dataset: str,
    threat_model: str,
    input: InputConvention | None,
    input_size: int | None,
    device: Any,
    num_classes: int | None,
) -> SourceModel:
    from awp import zoo

    ours = zoo.find_ours(name, dataset=dataset, threat_model=threat_model)
    if ours is not None:  # built here with our architectures (the key layout is ours)
        path = zoo.zoo_file(ours, model_dir)
        if input_size is not None:
            raise SourceError(f"robustbench:{name} takes CIFAR's 32x32 inputs; drop the input size")
        loaded = _checkpoint(path, input, device)
        return dataclasses.replace(loaded, name=f"robustbench:{name}", kind="robustbench")
    model, info = zoo.load_robustbench(
        name, model_dir=model_dir, dataset=dataset, threat_model=threat_model
    )
    _check_finite(model, f"robustbench:{name}")
    convention = _sized(input or InputConvention(), input_size)  # the classes normalize inside
    outputs = zoo.ZOO_CLASSES[dataset]
    if num_classes is not None and outputs != num_classes:
        raise SourceError(
            f"robustbench:{name} is a {outputs}-class {dataset} model, but the data has "
            f"{num_classes} classes: pass --dataset {dataset}"
        )
    return SourceModel(
        model=InputWrapper(model, convention).to(device).eval(),
        name=f"robustbench:{name}",
        kind="robustbench",
        input=convention,
        num_classes=outputs,
        sha256=info["sha256"],
        weights=info,
    )


# ----------------------------------------------------------------------------- weights


def load_weights_file(
    model: nn.Module, path: str | os.PathLike, *, source: str | None = None
) -> dict[str, Any]:
    """Load a state dict file into ``model``: ``.safetensors`` (the ``safetensors`` extra) or
    anything :func:`awp.checkpoint.read_state_dict` reads (``weights_only=True``); prefixes
    handled and mismatches listed as :func:`awp.checkpoint.load_weights` does.

    Returns:
        What was done: path, sha256, layout, stripped prefixes, dropped and filled keys.

    Raises:
        CheckpointError: unreadable, or keys and shapes that do not fit (listed).
    """
    path = Path(path)
    source = source or f"weights {path}"
    if path.suffix == ".safetensors":
        check_file(path, what="weights file")
        st = require("safetensors.torch", purpose=f"{path.name}")
        try:
            state = st.load_file(str(path))
        except Exception as err:
            raise CheckpointError(
                f"{source} is not a readable safetensors file ({type(err).__name__}: "
                f"{_first_line(err)})"
            ) from None
        layout = "safetensors"
    else:
        check_file(path, what="weights file")
        state, read = read_state_dict(path)
        if "checkpoint" in read:
            layout = "awp-landscape checkpoint"
        else:
            layout = read["layout"]
    adapted, how = adapt_state_dict(state, model)
    load_state_dict_checked(model, adapted, source=source)
    return {"path": str(path), "sha256": sha256_file(path), "layout": layout, **how}


def _check_finite(model: nn.Module, source: str) -> None:
    bad = first_nonfinite(model.state_dict())
    if bad is not None:
        raise SourceError(
            f"{source} holds non-finite values (NaN or infinity) in {bad}: the model had "
            "diverged when it was saved; use weights from before"
        )


def state_sha256(model: nn.Module, *, salt: str = "") -> str:
    """A sha256 of every tensor of the state dict (names, dtypes, shapes and bytes), and
    ``salt``: what identifies a model that has no file of its own."""
    h = hashlib.sha256(salt.encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _outputs_of(model: nn.Module) -> int | None:
    """The number of outputs of a model's last linear layer, when it has one (a guess for
    ``SourceModel.num_classes``; :func:`check_fits` decides with a forward pass)."""
    for attr in ("num_classes",):
        v = getattr(model, attr, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    config = getattr(model, "config", None)
    labels = getattr(config, "num_labels", None)
    return labels if isinstance(labels, int) else None


# ----------------------------------------------------------------------------- checks


def check_fits(source: SourceModel, x: torch.Tensor, *, num_classes: int, data: str) -> None:
    """Refuse a model that does not fit the data: inputs it rejects, or another number of
    outputs than the data has classes (one forward pass of one input, eval mode).

    Args:
        source: the model.
        x: one input or more, (n, ...) in [0, 1] on the model's device.
        num_classes: the data's classes.
        data: the data's name, for the message.

    Raises:
        SourceError: one line naming the model, the shapes and the fix.
    """
    shape = "x".join(map(str, x.shape[1:]))
    try:
        with torch.no_grad(), model_mode(source.model, "eval"):
            out = source.model(x[:1])
            if source.kind == "export":  # a program exported with a fixed batch size
                source.model(x[:1].expand(3, *x.shape[1:]))
    except (RuntimeError, ValueError, TypeError, AssertionError, IndexError) as err:
        hint = (
            "export it with a dynamic batch dimension (dynamic_shapes) and the data's input size"
            if source.kind == "export"
            else "give the input size it takes (--input-size N resizes and centre-crops inside "
            "the model), or pass the dataset it was trained on"
        )
        raise SourceError(
            f"{source.name} cannot take the inputs of {data} ({shape}): "
            f"{type(err).__name__}: {_first_line(err)}; {hint}"
        ) from None
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise SourceError(
            f"{source.name} gives outputs of shape {tuple(out.shape)} for one input of {data}, "
            f"not (1, {num_classes}): {data} has {num_classes} classes; build it with as many "
            f"(e.g. --model-kwargs '{{\"num_classes\": {num_classes}}}') or pass the dataset it "
            "was trained on"
        )


def check_bn_mode(source: SourceModel, bn: str) -> None:
    """Refuse ``bn="recompute"`` for a model whose BatchNorm statistics cannot be re-estimated
    (a TorchScript or ``torch.export`` program runs its BatchNorm as compiled).

    Raises:
        SourceError: an unknown mode, or recompute without BatchNorm modules to re-estimate.
    """
    if bn not in BN_MODES:
        raise SourceError(f"unknown BatchNorm mode {bn!r}; choose one of {', '.join(BN_MODES)}")
    if bn == "recompute":
        try:
            check_bn_recomputable(source.model, source.name)
        except ValueError as err:
            raise SourceError(str(err)) from None


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``--model-kwargs`` JSON as a dict.

    Raises:
        SourceError: not JSON, or not an object.
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SourceError(
            f"--model-kwargs {text!r} is not JSON ({err.msg}); write an object, e.g. "
            "'{\"num_classes\": 10}'"
        ) from None
    if not isinstance(value, dict):
        raise SourceError(
            f"--model-kwargs {text!r} is a {type(value).__name__}; write a JSON object, e.g. "
            "'{\"num_classes\": 10}'"
        )
    return value


def _nearest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    return f"; the nearest: {', '.join(close)}" if close else ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else "no message"


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputConvention",
    "InputWrapper",
    "SourceError",
    "SourceModel",
    "check_bn_mode",
    "check_fits",
    "default_input",
    "file_kind",
    "is_source",
    "load_source",
    "load_weights_file",
    "logits_of",
    "parse_kwargs",
    "resize_and_crop",
    "source_kind",
    "state_sha256",
]
