"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically.

A checkpoint is readable with ``torch.load(path, weights_only=True)`` anywhere, without this
library: ``ckpt["state_dict"]`` is a state dict with no ``module.``/``_orig_mod.`` prefixes
and the official AWP parameter names. Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import platform
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "awp-landscape/checkpoint"
SCHEMA = 1
PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then rename.

    A process killed mid-write leaves the previous file intact (``os.replace`` is atomic).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text write (UTF-8); see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to memory, then :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def library_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint and result file."""
    import numpy

    import awp

    return {
        "awp": str(awp.__version__),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
        "python": platform.python_version(),
    }


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


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``) and check it is one of ours.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: truncated/corrupt file, objects other than tensors and plain values,
            or a file that is not an awp-landscape checkpoint (with the fix to use).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain values, which are "
            f"never unpickled here (weights_only=True): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); use another checkpoint, "
            f"e.g. the run's last.pt or best.pt"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an awp-landscape checkpoint (no format tag {FORMAT!r}); a raw state "
            f"dict or an official AWP checkpoint is loaded with awp.checkpoint.load_foreign"
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


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> None:
    """``load_state_dict`` that names every missing/unexpected key and shape mismatch.

    Raises:
        CheckpointError: listing the missing and unexpected keys and mismatched shapes.
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
    from awp.config import from_dict
    from awp.models import ModelSpec, build_model

    ckpt = load_checkpoint(path)
    try:
        spec = from_dict(ModelSpec, ckpt["model_spec"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path}: bad model_spec: {err}") from err
    model = build_model(spec)
    load_state_dict_checked(model, ckpt["state_dict"], source=f"checkpoint {path}")
    return model.to(device).eval(), ckpt
