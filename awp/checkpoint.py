"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically.

A checkpoint is readable with ``torch.load(path, weights_only=True)`` anywhere, without this
library: ``ckpt["state_dict"]`` is a state dict with no ``module.``/``_orig_mod.`` prefixes
and the official AWP parameter names. Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from awp.config import from_dict
from awp.io import atomic_torch_save, library_versions, sha256_file
from awp.models import ModelSpec, build_model

FORMAT = "awp-landscape/checkpoint"
SCHEMA = 1
PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = {}
    for k, t in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = t
    return out


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    model_spec: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    epoch: int = 0,
    metrics: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: destination file (``.pt``); its folder is created.
        model: the network (wrappers are unwrapped through the state dict's prefixes).
        model_spec: JSON-able description to rebuild the architecture (``ModelSpec`` as dict).
        config: the training configuration as a JSON-able dict.
        epoch: number of finished epochs.
        metrics: JSON-able metrics (e.g. the last epoch's record).
        extra: more entries (optimizer state, RNG states as tensors, ...): only tensors,
            numbers, strings, lists and dicts, so ``weights_only=True`` can read them.
    """
    state = strip_prefixes(model.state_dict())
    ckpt = {
        "format": FORMAT,
        "schema": SCHEMA,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "model_spec": dict(model_spec),
        "config": dict(config or {}),
        "epoch": int(epoch),
        "metrics": metrics,
        "versions": library_versions(),
    }
    if extra:
        ckpt.update(extra)
    return atomic_torch_save(ckpt, path)


# What torch's weights-only unpickler says when it refuses an object it could otherwise read
# (as opposed to bytes that are no pickle at all: "Unsupported operand", "String is too long").
_REFUSALS = ("Unsupported global", "unsupported GLOBAL", "allowlisted", "unrecognized function")


def _refused_object(err: pickle.UnpicklingError) -> bool:
    """True when torch's weights-only unpickler refused an object (not mere corruption)."""
    return any(r in str(err) for r in _REFUSALS)


def _unpickler_reason(err: BaseException) -> str:
    """The line of torch's message that says what went wrong, without the paragraphs it wraps
    around every failure (PyTorch 2.6's change of default, "please file an issue"...)."""
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        ln = ln.split("WeightsUnpickler error:", 1)[-1].strip()
        if ln and not ln.startswith(boiler):
            return ln
    return lines[0] if lines else "no detail"


def check_file(path: str | os.PathLike, *, what: str = "checkpoint") -> None:
    """Refuse a path that is missing or a directory, naming it and the fix.

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: a folder (e.g. a run folder given instead of one of its checkpoints).
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(path.glob("checkpoints/*.pt")) or sorted(path.glob("*.pt"))
        hint = f", e.g. {inside[-1]}" if inside else ""
        raise IsADirectoryError(f"{what} {path} is a directory; pass a .pt file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")


def other_checkpoints(path: str | os.PathLike) -> str:
    """A hint naming the other checkpoints beside ``path`` (for a corrupt one): the last three
    that are whole torch files (a truncated one is no help)."""
    path = Path(path)
    others = [
        p for p in sorted(path.parent.glob("*.pt")) if p.name != path.name and _whole_torch_file(p)
    ]
    if not others:
        return "use another checkpoint"
    named = ", ".join(p.name for p in others[-3:])
    return f"use another checkpoint of {path.parent} ({named})"


# The first bytes of the files torch.save writes: a zip archive (its default since 1.6), or,
# in the legacy format, a pickle of torch's magic number 0x1950a86a20f9469cfc6c.
_ZIP_HEAD = b"PK\x03\x04"
_LEGACY_HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _file_kind(path: Path) -> str:
    """``torch`` (what torch.save writes, whole or not), ``pickle`` (a pickle that torch.save
    did not write) or ``other``, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_HEAD))
    if head and (head.startswith(_ZIP_HEAD[: len(head)]) or _LEGACY_HEAD.startswith(head)):
        return "torch"  # (or what is left of one cut within its first bytes)
    # Pickle protocols 2 to 5 start with PROTO (0x80) and the protocol number.
    return "pickle" if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 else "other"


def _whole_torch_file(path: Path) -> bool:
    """Whether ``path`` is a torch file that is not cut short (a zip archive whose directory
    reads; a legacy file is taken as whole): cheap, nothing is unpickled."""
    try:
        if _file_kind(path) != "torch":
            return False
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("data.pkl") for n in z.namelist())
        with open(path, "rb") as f:
            return not f.read(4).startswith(_ZIP_HEAD)
    except (OSError, zipfile.BadZipFile, IndexError):
        return False


def safe_torch_load(
    path: str | os.PathLike,
    *,
    what: str = "checkpoint",
    map_location: str | torch.device = "cpu",
    trust_hint: str = "",
    corrupt_hint: str = "",
) -> Any:
    """``torch.load(path, weights_only=True)`` with one clear error per way of failing.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: bytes that are not a (complete) torch file, or objects other than
            tensors and plain values (refused, never unpickled). ``trust_hint`` /
            ``corrupt_hint`` are appended to the respective message.
    """
    path = Path(path)
    check_file(path, what=what)
    kind = _file_kind(path)
    if kind == "pickle":  # torch would read it as a legacy file and fail on the first object
        raise CheckpointError(
            f"{what} {path} is a plain pickle, not a file written by torch.save, and pickles are "
            "never unpickled here (they can run code); if you trust it, re-save its tensors "
            "with torch.save (e.g. torch.save(state_dict, 'weights.pt'))"
            + (f", or {corrupt_hint}" if corrupt_hint else "")
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if _refused_object(err):
            raise CheckpointError(
                f"{what} {path} holds objects other than tensors and plain values, which are "
                f"never unpickled here (weights_only=True): {_unpickler_reason(err).rstrip('.')}"
                + (f". {trust_hint}" if trust_hint else "")
            ) from err
        cause = err
    except Exception as err:  # a corrupt file can fail anywhere in the unpickler (IndexError...)
        cause = err
    said = (
        "is truncated or corrupt"
        if kind == "torch"
        else "is not a PyTorch file (nor a truncated one)"
    )
    raise CheckpointError(
        f"{what} {path} {said} ({type(cause).__name__}: "
        f"{_unpickler_reason(cause).split('. ')[0].rstrip('.')})"
        + (f"; {corrupt_hint}" if corrupt_hint else "")
    ) from cause


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``) and check it is one of ours.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: truncated/corrupt file, objects other than tensors and plain values,
            or a file that is not an awp-landscape checkpoint (with the fix to use).
    """
    path = Path(path)
    ckpt = safe_torch_load(path, map_location=map_location, corrupt_hint=other_checkpoints(path))
    return _check_ours(ckpt, path)


def _check_ours(ckpt: Any, path: Path) -> dict:
    """The format, schema and entries of one of our checkpoints, already read."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an awp-landscape checkpoint (no format tag {FORMAT!r}); a raw state "
            f"dict or an official AWP checkpoint is loaded with awp.checkpoint.load_weights "
            f"(awp eval --model ... --input normalized|raw)"
        )
    if ckpt.get("schema", 0) > SCHEMA:
        raise CheckpointError(
            f"{path} has schema {ckpt['schema']}, newer than this library's "
            f"{SCHEMA}; upgrade awp-landscape"
        )
    for key in ("state_dict", "model_spec"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry")
    return ckpt


def first_nonfinite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> None:
    """``load_state_dict`` that names every missing/unexpected key and shape mismatch.

    Raises:
        CheckpointError: listing the missing and unexpected keys and mismatched shapes, or
            naming a tensor that holds NaN or infinity.
    """
    own = model.state_dict()
    state = strip_prefixes(state_dict)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} in file vs {tuple(own[k].shape)} in model"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(
                f"shape mismatches (wrong architecture, width or number of classes?): "
                f"{_clip(shapes)}"
            )
        if missing:
            parts.append(f"missing keys: {_clip(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_clip(unexpected)}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    bad = first_nonfinite(state)
    if bad is not None:
        raise CheckpointError(
            f"{source} holds non-finite values (NaN or infinity) in {bad}: the training had "
            "diverged when it was saved; use a checkpoint from before"
        )
    model.load_state_dict(state)


def _clip(items: list[str], n: int = 8) -> str:
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_model(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode).

    Returns:
        (model on ``device`` in eval mode, the checkpoint dict).
    """
    ckpt = load_checkpoint(path)
    try:
        spec = from_dict(ModelSpec, ckpt["model_spec"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path}: bad model_spec: {err}") from err
    model = build_model(spec)
    load_state_dict_checked(model, ckpt["state_dict"], source=f"checkpoint {path}")
    return model.to(device).eval(), ckpt


# --------------------------------------------------------------------------- from elsewhere
# Where other codebases keep the state dict inside a saved dict.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "state", "last")
# Keys of TRADES-derived WideResNets (TRADES, TRADES-AWP, Rice et al.'s WRN, RobustBench's
# `sub_block1=True` models) for a block that forward() never uses.
UNUSED_PREFIXES = ("sub_block1.",)
# Whole-model wrappers some codebases save (nn.Sequential(normalize, model) and the like).
WRAPPER_PREFIXES = ("model.", "net.", "base_model.")


class WeightsInfo(dict):
    """What :func:`load_weights` did: ``path``, ``sha256``, ``layout`` (where the state dict was
    found), ``stripped`` prefixes, ``dropped`` unused keys, ``filled`` missing BatchNorm counters,
    and for our own checkpoints ``checkpoint`` (the full dict). A dict, so it is JSON-able."""


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a state dict from our checkpoints or from elsewhere, never unpickling objects.

    Accepted: an awp-landscape checkpoint; a dict holding the state dict under one of
    :data:`CONTAINER_KEYS` (the official AWP ``{'state_dict': ...}``, RobustBench; ``last`` of
    ``{'last': ..., 'best': ...}`` files, as RobustBench reads them); or a raw
    state dict (Rice et al., ``torch.save(model.state_dict())`` of the AWP/TRADES scripts).

    Returns:
        (state dict as saved, info with ``layout`` and, for our format, ``checkpoint``).

    Raises:
        FileNotFoundError, CheckpointError: as :func:`load_checkpoint`, or no state dict found.
    """
    path = Path(path)
    obj = safe_torch_load(
        path,
        trust_hint="If you trust the file, re-save its state dict alone: torch.save(torch.load("
        "path, weights_only=False)['state_dict'], 'weights.pt')",
        corrupt_hint=other_checkpoints(path),
    )
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt = _check_ours(obj, path)  # the schema checks of our own format
        return dict(ckpt["state_dict"]), {"layout": "awp-landscape checkpoint", "checkpoint": ckpt}
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), {"layout": "raw state dict"}
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                tensors = {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
                if len(tensors) == len(inner):
                    return tensors, {"layout": f"{{{key!r}: state dict}}"}
    found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"no state dict in {path}: expected a dict of tensors, or one under "
        f"{', '.join(repr(k) for k in CONTAINER_KEYS)}; found {found}"
    )


def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map another codebase's key layout onto ``model``'s: prefixes, unused blocks, counters.

    1. ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes go, and a
       whole-model wrapper prefix (``model.``) when every key has it and the model has none.
    2. ``sub_block1.*`` (an unused block of TRADES-derived WideResNets) is dropped when the
       model has no such keys.
    3. Missing ``*.num_batches_tracked`` counters (checkpoints from before PyTorch 0.4.1) are
       filled with 0; they only matter for BatchNorm with ``momentum=None``.

    Everything else is left for :func:`load_state_dict_checked` to accept or to list.

    Returns:
        (adapted state dict, info with ``stripped``, ``dropped``, ``filled``).
    """
    own = model.state_dict()
    state = strip_prefixes(state_dict)
    stripped = sorted({p for k in state_dict for p in PREFIXES if k.startswith(p)})
    for p in WRAPPER_PREFIXES:
        if state and all(k.startswith(p) for k in state) and not any(k.startswith(p) for k in own):
            state = {k[len(p) :]: v for k, v in state.items()}
            stripped.append(p)
            break
    dropped = []
    for p in UNUSED_PREFIXES:
        if not any(k.startswith(p) for k in own):
            dropped += [k for k in state if k.startswith(p)]
    for k in dropped:
        del state[k]
    missing = [k for k in own if k not in state]
    filled = []
    if missing and all(k.endswith("num_batches_tracked") for k in missing):
        for k in missing:
            state[k] = torch.zeros_like(own[k])
        filled = missing
    return state, {"stripped": stripped, "dropped": dropped, "filled": filled}


def load_weights(
    model: nn.Module, path: str | os.PathLike, *, source: str | None = None
) -> WeightsInfo:
    """Load weights into ``model`` from our checkpoints or from the official AWP, TRADES,
    Rice et al. or RobustBench layouts (see :func:`read_state_dict`, :func:`adapt_state_dict`).

    The input convention is not in those files: the caller builds ``model`` with it
    (``ModelSpec(mean=..., std=...)`` for normalized input, ``mean=None`` for raw [0, 1]).

    Args:
        model: the architecture to fill (its keys decide what is stripped and dropped).
        path: the file.
        source: how to name the file in errors (default ``checkpoint <path>``).

    Returns:
        :class:`WeightsInfo`.

    Raises:
        CheckpointError: unreadable file, or keys/shapes that do not fit the model, with the
            missing and unexpected keys listed.
    """
    state, info = read_state_dict(path)
    adapted, how = adapt_state_dict(state, model)
    load_state_dict_checked(model, adapted, source=source or f"checkpoint {path}")
    return WeightsInfo(path=str(path), sha256=sha256_file(path), **info, **how)
