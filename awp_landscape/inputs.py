"""Where checkpoints, data and devices meet: every command that takes a checkpoint loads it here.

:class:`Inputs` loads each checkpoint (ours, or one from elsewhere described by ``--model`` and
``--input``) with the dataset it was trained on (or ``--dataset``), each dataset once, on the
command's device, and names checkpoints for tables and figures. A model named by a source
string (``torchvision:NAME``, ``timm:NAME``, ``py:module:factory``, ``hf:DIR``,
``robustbench:NAME``, a TorchScript or ``torch.export`` file) is loaded by
:func:`awp.sources.load_source` with ``--model-kwargs``, ``--weights``, ``--input`` and
``--input-size``, on ``--dataset`` (default: the bundled sample).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from awp import distributed
from awp.augment import as_float
from awp.checkpoint import check_file, load_checkpoint, load_weights, read_state_dict
from awp.config import from_dict, method_of
from awp.data import DataBundle, DataConfig, load_data
from awp.io import exclusive_output, sha256_file
from awp.method_config import AVERAGES
from awp.models import ModelSpec, build_model
from awp.modes import model_mode
from awp.sources import (
    PREFIXES,
    InputConvention,
    SourceModel,
    is_source,
    load_source,
    parse_kwargs,
)
from awp.sources import check_fits as check_source_fits
from awp.zoo import (
    find_ours,
    find_zoo_model,
    robustbench_entry,
    zoo_dataset,
    zoo_file,
    zoo_model_at,
)
from awp_landscape.checkpoint_flags import (  # the flags, re-exported: their home was here
    INPUTS as INPUTS,
)
from awp_landscape.checkpoint_flags import Foreign as Foreign
from awp_landscape.checkpoint_flags import ForeignOptions, foreign_from
from awp_landscape.checkpoint_flags import add_checkpoint_arguments as add_checkpoint_arguments
from awp_landscape.console import CLIError


def resolve_robustbench(args: argparse.Namespace) -> None:
    """Add the files of ``--robustbench`` names to the command's checkpoints (``checkpoints``,
    or the one ``checkpoint``), and refuse a command given none at all.

    Raises:
        ValueError, FileNotFoundError: one line (an unknown name, a missing file).
        CLIError: no checkpoint, or several where the command takes one.
    """
    names = getattr(args, "robustbench", None) or []
    dataset = zoo_dataset(getattr(args, "dataset", None))
    paths = [
        zoo_file(find_zoo_model(n, dataset=dataset, threat_model=args.threat_model), args.model_dir)
        if find_ours(n, dataset=dataset, threat_model=args.threat_model) is not None
        # every other entry: built with robustbench's own classes (awp.zoo.load_robustbench),
        # its name and file checked now, before any output is claimed
        else _robustbench_source(n, dataset=dataset, args=args)
        for n in names
    ]
    if hasattr(args, "checkpoints"):
        args.checkpoints = [*(args.checkpoints or []), *paths]
        given = args.checkpoints
    else:
        given = [p for p in [args.checkpoint, *paths] if p is not None]
        if len(given) > 1:
            raise CLIError(f"awp {args.command} takes one checkpoint, got {len(given)}")
        args.checkpoint = given[0] if given else None
    if not given:
        raise CLIError("give a checkpoint file (.pt) or a zoo model with --robustbench NAME")


def _robustbench_source(name: str, *, dataset: str, args: argparse.Namespace) -> Path:
    robustbench_entry(
        name, model_dir=args.model_dir, dataset=dataset, threat_model=args.threat_model
    )
    return Path(f"robustbench:{name}")


@dataclass
class Loaded:
    """A checkpoint ready to measure: the model in eval mode on the device, and its data."""

    path: Path
    model: nn.Module
    spec: ModelSpec
    ckpt: dict[str, Any] | None  # our checkpoint dict; None for one from elsewhere
    data_cfg: DataConfig | None
    data: DataBundle | None  # None when loaded without data (weights only)
    sha256: str
    weights: dict[str, Any]  # what load_weights did (layout, stripped prefixes, ...)
    source: SourceModel | None = None  # a model named by a source string (awp.sources)

    @property
    def config(self) -> dict[str, Any]:
        """The training config the checkpoint records (empty for one from elsewhere)."""
        return dict((self.ckpt or {}).get("config") or {})

    @property
    def input(self) -> str:
        return "raw" if self.spec.mean is None else "normalized"

    def identity(self) -> dict[str, Any]:
        """The columns that name this checkpoint in every result table."""
        if self.source is not None:
            return source_identity(self.source.name, self.sha256)
        return identity(self.path, self.ckpt, self.sha256)


def checkpoint_name(checkpoint: Path) -> str:
    """A checkpoint's name within its run for file names: ``last``, ``epoch_003``; a weight
    average's ``ema_last``, ``swa_best`` (so it never shares a results file with the run's
    own ``last.pt``)."""
    parent = checkpoint.resolve().parent
    if parent.parent.name == "checkpoints" and parent.name in AVERAGES:
        return f"{parent.name}_{checkpoint.stem}"
    return checkpoint.stem


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder of a checkpoint (``<run>/checkpoints/x.pt`` -> ``<run>``; a weight
    average's ``<run>/checkpoints/ema/x.pt`` -> ``<run>`` too)."""
    parent = checkpoint.resolve().parent
    if parent.parent.name == "checkpoints" and parent.name in AVERAGES:
        parent = parent.parent
    return parent.parent if parent.name == "checkpoints" else parent


def identity(path: Path, ckpt: dict[str, Any] | None, sha: str) -> dict[str, Any]:
    """checkpoint, sha256, run, method, epoch of a checkpoint (a weight average's method is
    the run's with ``+EMA`` or ``+SWA``)."""
    config = (ckpt or {}).get("config") or {}
    return {
        "checkpoint": str(path),
        "sha256": sha,
        "run": run_folder_of(path).name,
        "method": method_of(config, (ckpt or {}).get("average")),
        "epoch": int((ckpt or {}).get("epoch", 0)),
    }


def source_identity(name: str, sha: str) -> dict[str, Any]:
    """The identity columns of a model named by a source string: the string names it (as its
    method, for labels), its weights' sha256 identifies it."""
    return {"checkpoint": name, "sha256": sha, "run": "", "method": name, "epoch": 0}


def identity_of(path: Path) -> dict[str, Any]:
    """:func:`identity` of a checkpoint file (one from elsewhere is named by its file; a model
    named by a prefixed source string by that string, its sha256 known once loaded)."""
    if is_prefixed(path):
        return source_identity(str(path), "")
    if is_source(path):  # a TorchScript or torch.export file: named by the file
        return source_identity(str(path), sha256_file(path))
    try:
        ckpt = load_checkpoint(path)
    except ValueError:
        ckpt = None
    return identity(path, ckpt, sha256_file(path))


def checkpoint_sha256(path: Path, inputs: Inputs) -> str:
    """What identifies a checkpoint's weights: the file's sha256, or for a model named by a
    prefixed source string the :attr:`awp.sources.SourceModel.sha256` of the model it builds
    (loaded through ``inputs``, which keeps the data it loads)."""
    return inputs.load(path).sha256 if is_prefixed(path) else sha256_file(path)


def unique_labels(idents: Sequence[dict[str, Any]], given: Sequence[str] | None) -> list[str]:
    """--labels as given (one each, no repeats), else the methods, made unique by epoch or run."""
    if given:
        if len(given) != len(idents):
            raise ValueError(f"--labels has {len(given)} names for {len(idents)} checkpoints")
        if len(set(given)) != len(given):
            raise ValueError(f"--labels {list(given)} repeats a name")
        return list(given)
    labels = [i["method"] for i in idents]
    if len(set(labels)) == len(labels):
        return labels
    labels = [f"{i['method']} ep{i['epoch']}" for i in idents]
    if len(set(labels)) == len(labels):
        return labels
    return [f"{i['method']} {i['run']}/{Path(i['checkpoint']).stem}" for i in idents]


def is_prefixed(path: Path | str) -> bool:
    """A source string with a prefix (``torchvision:``, ``py:``...): no file to check."""
    return str(path).startswith(PREFIXES)


def check_files(paths: Sequence[Path], foreign: ForeignOptions | None = None) -> None:
    """Refuse a checkpoint path that is missing or a directory, before anything is computed
    (source strings with a prefix name no file; :func:`awp.sources.load_source` checks them),
    and flags of models built from a source string when no model is one (they would be
    ignored)."""
    for p in paths:
        if not is_prefixed(p):
            check_file(p)
    if foreign is None or not paths or any(is_source(p) for p in paths):
        return
    flags = (("--input-size", foreign.input_size), ("--weights", foreign.weights),
             ("--model-kwargs", foreign.model_kwargs))  # fmt: skip
    given = [flag for flag, v in flags if v]
    if given:
        raise CLIError(
            f"{', '.join(given)} would be ignored: {paths[0]} is a checkpoint of our "
            "architectures, and these describe models named by a source string (e.g. "
            "torchvision:resnet18 --weights FILE); drop them"
        )


def check_fits(model: nn.Module, spec: ModelSpec, data: DataBundle, path: Path) -> None:
    """Refuse a model that does not fit the data: another number of classes, or images it
    cannot take (one forward pass of one image, in eval mode, decides)."""
    if spec.num_classes != data.num_classes:
        raise CLIError(
            f"{path} is a {spec.num_classes}-class model, but {data.name} has "
            f"{data.num_classes} classes: pass the dataset it was trained on with --dataset"
        )
    split = data.test if len(data.test) else data.train
    if not len(split):
        return
    x = as_float(split.x[:1])
    try:
        with torch.no_grad(), model_mode(model, "eval"):
            logits = model(x)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0]
        raise CLIError(
            f"{path} ({spec.name}) cannot take the images of {data.name} "
            f"({'x'.join(map(str, x.shape[1:]))}): {reason}; pass the dataset it was trained on "
            "with --dataset"
        ) from None
    if tuple(logits.shape) != (1, data.num_classes):
        raise CLIError(
            f"{path} gives {tuple(logits.shape)} outputs for one image of {data.name}, not "
            f"(1, {data.num_classes}); pass the dataset it was trained on with --dataset"
        )


class Inputs:
    """Checkpoints and their datasets for one command: each dataset is loaded once.

    Args:
        device: where models and data go.
        dataset, data_root: ``--dataset`` / ``--data-root`` (None: the checkpoint's own).
        center_crop: ``--center-crop``: images of a folder resized and centre-cropped to it
            (None: the checkpoint's own setting, else images as stored).
        foreign: (architecture, input convention) for checkpoints from elsewhere.
        progress: show a bar while decoding large image archives.
    """

    def __init__(
        self,
        device: torch.device,
        *,
        dataset: str | None = None,
        data_root: str | None = None,
        center_crop: int | None = None,
        foreign: ForeignOptions = ForeignOptions(),
        progress: bool = False,
    ) -> None:
        self.device = device
        self.dataset, self.data_root = dataset, data_root
        self.center_crop = center_crop
        self.foreign = foreign
        self.arch, self.input = self.foreign.arch, self.foreign.input
        self.progress = progress
        self._data: dict[DataConfig, DataBundle] = {}

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: torch.device, *, progress: bool) -> Inputs:
        """The inputs a command's ``--dataset``, ``--data-root``, ``--model`` ... describe."""
        return cls(
            device,
            dataset=getattr(args, "dataset", None),
            data_root=getattr(args, "data_root", None),
            center_crop=getattr(args, "center_crop", None),
            foreign=foreign_from(args),
            progress=progress,
        )

    def data(self, data_cfg: DataConfig) -> DataBundle:
        """The dataset of a config, loaded once."""
        if data_cfg not in self._data:
            self._data[data_cfg] = load_data(data_cfg, self.device, progress=self.progress)
        return self._data[data_cfg]

    def data_config(self, recorded: dict[str, Any] | None, path: Path) -> DataConfig:
        """The data a checkpoint was trained on, with ``--dataset``, ``--data-root`` and
        ``--center-crop`` applied."""
        if recorded is None:
            data_cfg = DataConfig(val_size=0)  # no training run to hold a validation split for
        elif not recorded and not self.dataset:
            raise ValueError(
                f"{path} does not record the dataset it was trained on; pass --dataset "
                "(e.g. --dataset cifar10 or a path to an ImageFolder .tar.gz)"
            )
        else:
            data_cfg = from_dict(DataConfig, recorded)
        given = (("dataset", self.dataset), ("data_root", self.data_root),
                 ("center_crop", self.center_crop))  # fmt: skip
        changes = {k: v for k, v in given if v}
        return dataclasses.replace(data_cfg, **changes)

    def load(self, path: Path, *, with_data: bool = True) -> Loaded:
        """Load one checkpoint with its data (see the class).

        ``with_data=False`` loads only the weights of our checkpoints (a checkpoint from
        elsewhere still needs its dataset: the number of classes comes from it).
        """
        if is_source(path):
            return self.load_source(path)
        check_file(path)
        _, info = read_state_dict(path)
        ckpt = info.get("checkpoint")
        data_cfg: DataConfig | None = None
        data: DataBundle | None = None
        zoo = zoo_model_at(path) if ckpt is None and self.arch is None else None
        if ckpt is not None:
            spec = self._own_spec(path, ckpt)
            if with_data:
                recorded = dict((ckpt.get("config") or {}).get("data") or {})
                data_cfg = self.data_config(recorded, path)
                data = self.data(data_cfg)
        elif zoo is not None:  # a RobustBench file in its zoo's layout: architecture known
            spec = zoo.spec
            data_cfg = self.data_config(None, path)
            data = self.data(data_cfg)
        else:
            self._require_foreign(path, info["layout"])
            assert self.arch is not None
            data_cfg = self.data_config(None, path)
            data = self.data(data_cfg)
            normalized = self.input == "normalized"
            spec = self.arch.spec(
                data.num_classes,
                mean=tuple(data.mean) if normalized else None,
                std=tuple(data.std) if normalized else None,
            )
        model = build_model(spec)
        weights = dict(load_weights(model, path))
        weights.pop("checkpoint", None)
        model = model.to(self.device).eval()
        if data is not None:
            check_fits(model, spec, data, Path(path))
        return Loaded(
            path=Path(path),
            model=model,
            spec=spec,
            ckpt=ckpt,
            data_cfg=data_cfg,
            data=data,
            sha256=weights.get("sha256") or sha256_file(path),
            weights=weights,
        )

    def load_source(self, name: Path | str) -> Loaded:
        """A model named by a source string (:func:`awp.sources.load_source`), on ``--dataset``
        (default: the bundled sample), checked against the data: classes and input size.

        ``--input raw|normalized`` replaces the source's own normalization (normalized: the
        dataset's mean and std); ``--input-size N`` adds the resize and centre crop to it."""
        data_cfg = self.data_config(None, Path(name))
        data = self.data(data_cfg)
        f = self.foreign
        if f.arch is not None:
            raise CLIError(
                f"{name} names its architecture itself; drop --model {f.arch.name} (it "
                "describes checkpoints from elsewhere)"
            )
        common = dict(
            num_classes=data.num_classes,
            weights=f.weights,
            kwargs=parse_kwargs(f.model_kwargs),
            device=self.device,
            model_dir=f.model_dir,
            dataset=zoo_dataset(self.dataset),
            threat_model=f.threat_model,
        )
        convention = None
        if f.input is not None:
            normalized = f.input == "normalized" and bool(data.mean)
            convention = InputConvention(
                mean=tuple(data.mean) if normalized else None,
                std=tuple(data.std) if normalized else None,
            )
        source = load_source(name, input=convention, input_size=f.input_size, **common)
        split = data.test if len(data.test) else data.train
        if len(split):
            check_source_fits(
                source, as_float(split.x[:1]), num_classes=data.num_classes, data=data.name
            )
        return Loaded(
            path=Path(name),
            model=source.model,
            spec=source_spec(source),
            ckpt=source.checkpoint,
            data_cfg=data_cfg,
            data=data,
            sha256=source.sha256,
            weights=dict(source.weights),
            source=source,
        )

    def _own_spec(self, path: Path, ckpt: dict[str, Any]) -> ModelSpec:
        try:
            spec = from_dict(ModelSpec, ckpt["model_spec"])
        except (ValueError, TypeError) as err:
            raise CLIError(f"checkpoint {path}: bad model_spec: {err}") from err
        if self.arch is not None and self.arch.name != spec.name:
            raise CLIError(
                f"{path} is an awp-landscape checkpoint of a {spec.name}; drop --model "
                f"{self.arch.name} (it describes checkpoints from elsewhere)"
            )
        own_input = "raw" if spec.mean is None else "normalized"
        if self.input is not None and self.input != own_input:
            raise CLIError(
                f"{path} records its input convention ({own_input}); drop --input {self.input}"
            )
        return spec

    def _require_foreign(self, path: Path, layout: str) -> None:
        missing = [f for f, v in (("--model", self.arch), ("--input", self.input)) if v is None]
        if missing:
            raise CLIError(
                f"{path} is not an awp-landscape checkpoint ({layout}): say what it is "
                f"with {' and '.join(missing)} (e.g. --model wideresnet --depth 34 "
                f"--input raw for TRADES-AWP, --model preactresnet18 --input normalized for "
                f"AT-AWP)"
            )


@dataclass(frozen=True)
class SourceSpec:
    """What a model named by a source string is, as result files record it (in place of our
    ``ModelSpec``): the source, its kind, its outputs and input convention."""

    name: str
    kind: str
    num_classes: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    input_size: int | None


def same_model(a: Loaded, b: Loaded) -> bool:
    """Whether two loaded models are one architecture whose weights can be compared, mixed or
    interpolated: equal specs for ours; for models from elsewhere (two TorchScript files, a
    source with two weight files...) the same input convention and the same tensor names and
    shapes, whatever their names."""
    if a.source is None and b.source is None:
        return a.spec == b.spec

    def architecture(m: Loaded) -> tuple[Any, dict[str, tuple[int, ...]]]:
        spec = dataclasses.replace(m.spec, name="") if isinstance(m.spec, SourceSpec) else m.spec
        return spec, {n: tuple(t.shape) for n, t in m.model.state_dict().items()}

    return architecture(a) == architecture(b)


def source_spec(source: SourceModel) -> SourceSpec:
    """The :class:`SourceSpec` of a loaded source."""
    return SourceSpec(
        name=source.name,
        kind=source.kind,
        num_classes=source.num_classes,
        mean=source.input.mean,
        std=source.input.std,
        input_size=source.input.size,
    )


def default_label(path: Path) -> str:
    """AT / AT-AWP / TRADES-AWP... from a checkpoint's training config, else the file stem (a
    source string with a prefix: the string)."""
    if is_prefixed(path):
        return str(path)
    if is_source(path):
        return path.stem
    try:
        ckpt = load_checkpoint(path)
    except (ValueError, OSError):
        return path.stem
    config = ckpt.get("config") or {}
    return method_of(config, ckpt.get("average")) if config.get("method") else path.stem


def rows_of(items: Sequence[Any]) -> list[dict[str, Any]]:
    """Dataclass instances or mappings as dict rows."""
    return [dataclasses.asdict(i) if dataclasses.is_dataclass(i) else dict(i) for i in items]


@dataclass(frozen=True)
class Sources:
    """Where a command's checkpoints are read and measured: the options every command that
    takes checkpoints shares (device, ``--dataset``, ``--data-root``, checkpoints from
    elsewhere, progress bars)."""

    device: str = "auto"
    dataset: str | None = None
    data_root: str | None = None
    center_crop: int | None = None
    foreign: ForeignOptions = ForeignOptions()
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sources:
        return cls(
            device=getattr(args, "device", "auto"),
            dataset=getattr(args, "dataset", None),
            data_root=getattr(args, "data_root", None),
            center_crop=getattr(args, "center_crop", None),
            foreign=foreign_from(args),
            progress=not getattr(args, "no_progress", False),
        )

    def settings(self) -> dict[str, Any]:
        """What a result depends on besides its checkpoint and its measure's config: the data
        (``--center-crop`` too), and the input convention given to a model from elsewhere
        (``--input``, ``--input-size``); these three only when given, so results made without
        them read the same."""
        given = {
            "center_crop": self.center_crop,
            "input": self.foreign.input,
            "input_size": self.foreign.input_size,
        }
        return {
            "dataset": self.dataset,
            "data_root": self.data_root,
            **{k: v for k, v in given.items() if v is not None},
        }


@contextmanager
def held_inputs(
    checkpoints: Sequence[Path],
    *,
    out: Path,
    lock: str,
    cleans: Sequence[Path],
    sources: Sources,
) -> Iterator[tuple[Inputs, distributed.DistContext]]:
    """The start every analysis command shares: the checkpoint files are checked, the torchrun
    job (if any) is joined, rank 0 holds ``out`` (:func:`awp.io.exclusive_output` with ``lock``
    and ``cleans``), and the inputs are opened on this rank's device (progress bars on rank 0).

    Yields:
        (inputs, this process's place in the job).
    """
    check_files(checkpoints, sources.foreign)
    claim = exclusive_output(out, folder_lock=lock, cleans=cleans)
    with distributed.joined(sources.device) as ctx, distributed.main_holds(ctx, claim):
        inputs = Inputs(
            distributed.pick_device(sources.device, ctx),
            dataset=sources.dataset,
            data_root=sources.data_root,
            center_crop=sources.center_crop,
            foreign=sources.foreign,
            progress=sources.progress and ctx.is_main,
        )
        yield inputs, ctx


def out_folder(out: Path | None, checkpoints: Sequence[Path], *, under: str = "") -> Path:
    """``--out``, or else the one rule of every command that reads checkpoints (docs/cli.md):
    ``<run>/analysis`` (``/under``, where the command has its own folder) when every checkpoint
    comes from one run folder (``<run>/checkpoints/x.pt``, or the folder of a lone file);
    checkpoints from several folders need ``--out``."""
    if out is not None:
        return out
    runs = {run_folder_of(c) for c in checkpoints}
    if len(runs) != 1:
        raise CLIError(
            f"the checkpoints come from {len(runs)} run folders; name one results folder "
            f"with --out (e.g. --out results/analysis)"
        )
    folder = runs.pop() / "analysis"
    return folder / under if under else folder
