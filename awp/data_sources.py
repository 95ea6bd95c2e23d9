"""Data from elsewhere as the tensors every measure takes: tensors files, ``py:`` dataset
functions, and a DataLoader or (x, y) from Python.

- A tensors file (``.pt`` read with ``weights_only=True``, ``.npz``, or ``.safetensors`` with
  the ``safetensors`` extra) holds ``x`` and ``y`` (one set, used as both the training and the
  test split), or ``train_x``, ``train_y``, ``test_x``, ``test_y``; optionally ``classes``
  (names, in ``.pt`` and ``.npz``). x is uint8 images (N, C, H, W), float images in [0, 1],
  or float tensors of any shape (N, ...) for models on other inputs; y is (N,) int64 labels
  (or float targets of a regression).
- ``py:package.module:function`` returns a torch ``Dataset`` of (x, y) items (PIL images,
  arrays or tensors, and int or tensor labels); called with ``split="train"`` / ``"test"`` when
  it takes ``split``, with ``train=True`` / ``False`` when it takes ``train`` (torchvision's
  datasets), else once for both splits.
- :func:`tensors_of` turns a DataLoader, a Dataset or an (x, y) pair into (x, y) tensors.

Reading files is all this module does: nothing is downloaded or written.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

TENSOR_SUFFIXES = (".pt", ".pth", ".npz", ".safetensors")
DATASET_PREFIX = "py:"


def is_tensors_file(name: str) -> bool:
    """True for a dataset string naming a tensors file (by its suffix)."""
    return Path(name).suffix.lower() in TENSOR_SUFFIXES


def load_tensors_file(path: str | os.PathLike) -> dict[str, Any]:
    """The splits of a tensors file as CPU tensors: ``train_x``, ``train_y``, ``test_x``,
    ``test_y`` and ``classes`` (a tuple of names, or None).

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file and what is missing or wrong (keys, lengths,
            label type, objects other than tensors in a ``.pt``).
    """
    from awp.checkpoint import safe_torch_load

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tensors file {path} does not exist")
    suffix = path.suffix.lower()
    classes: Any = None
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
        classes = raw.pop("classes", None)
        items = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in raw.items()}
    elif suffix == ".safetensors":
        from awp.extras import require

        st = require("safetensors.torch", purpose=f"the tensors file {path.name}")
        items = dict(st.load_file(str(path)))
    else:
        obj = safe_torch_load(path, what="tensors file")
        if not isinstance(obj, dict):
            raise ValueError(
                f"tensors file {path} holds a {type(obj).__name__}; save a dict: "
                "torch.save({'x': x, 'y': y}, path)"
            )
        classes = obj.get("classes")
        items = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if {"x", "y"} <= set(items):
        splits = {"train": (items["x"], items["y"]), "test": (items["x"], items["y"])}
    elif {"train_x", "train_y", "test_x", "test_y"} <= set(items):
        splits = {s: (items[f"{s}_x"], items[f"{s}_y"]) for s in ("train", "test")}
    else:
        raise ValueError(
            f"tensors file {path} holds {sorted(items) or 'no tensors'}; it needs x and y (used "
            "as both splits) or train_x, train_y, test_x and test_y"
        )
    out: dict[str, Any] = {}
    for split, (x, y) in splits.items():
        x, y = _checked(x, y, f"tensors file {path} ({split})")
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    out["classes"] = _classes(classes, out, str(path))
    return out


def _checked(x: torch.Tensor, y: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() < 1 or y.dim() < 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(
            f"{where}: x {tuple(x.shape)} and y {tuple(y.shape)} need the same number of "
            "examples (> 0) along their first dimension"
        )
    if not (x.dtype == torch.uint8 or x.is_floating_point() or x.dtype == torch.int64):
        raise ValueError(
            f"{where}: x is {x.dtype}; give uint8 images, floats (images in [0, 1] or any "
            "features) or int64 token ids"
        )
    if y.is_floating_point():
        return x, y
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{where}: y is {y.dtype}; give int64 labels or float targets")
    y = y.to(torch.int64)
    if int(y.min()) < 0:
        raise ValueError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return x, y


def _classes(given: Any, splits: dict[str, Any], where: str) -> tuple[str, ...]:
    """Class names: given, else 0..K-1 for the labels (none for float targets)."""
    labels = [splits["train_y"], splits["test_y"]]
    if any(y.is_floating_point() for y in labels):
        return ()
    k = 1 + max(int(y.max()) for y in labels)
    if given is None:
        return tuple(str(i) for i in range(k))
    names = tuple(str(c) for c in (given.tolist() if hasattr(given, "tolist") else given))
    if len(names) < k:
        raise ValueError(f"{where}: {len(names)} class names for labels up to {k - 1}")
    return names


def load_dataset_function(spec: str) -> dict[str, Any]:
    """The splits of ``py:package.module:function`` (see the module docstring), as tensors.

    Raises:
        ValueError: one line naming the source: a module that does not import, no such
            function, a function that raises, items that are not (x, y) pairs.
    """
    target = spec[len(DATASET_PREFIX) :]
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec}: write py:package.module:function, returning a torch Dataset")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        raise ValueError(
            f"{spec}: module {module_name} does not import ({err}); check the module path"
        ) from None
    except AttributeError:
        raise ValueError(f"{spec}: {module_name} has no {attr!r}") from None
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    out: dict[str, Any] = {}
    datasets = {}
    for split in ("train", "test"):
        if "split" in params:
            kwargs: dict[str, Any] = {"split": split}
        elif "train" in params:
            kwargs = {"train": split == "train"}
        else:
            kwargs = {}
        if split == "test" and not kwargs:
            datasets["test"] = datasets["train"]
            break
        try:
            datasets[split] = fn(**kwargs)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "no message"
            raise ValueError(
                f"{spec} failed ({type(err).__name__}: {first}); fix the function"
            ) from None
    for split, ds in datasets.items():
        x, y = stack_dataset(ds, where=f"{spec} ({split})")
        out[f"{split}_x"], out[f"{split}_y"] = _checked(x, y, f"{spec} ({split})")
    classes = getattr(datasets["train"], "classes", None)
    out["classes"] = _classes(classes, out, spec)
    return out


def stack_dataset(dataset: Any, *, where: str = "the dataset") -> tuple[torch.Tensor, torch.Tensor]:
    """Every (x, y) item of a map-style or iterable Dataset, stacked: PIL images become uint8
    (C, H, W), arrays and tensors are kept as they are, labels become a tensor.

    Raises:
        ValueError: an item that is not an (x, y) pair, or items of different shapes.
    """
    xs, ys = [], []
    for i, item in enumerate(_items(dataset)):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError(f"{where}: item {i} is a {type(item).__name__}, not an (x, y) pair")
        xs.append(_as_tensor(item[0]))
        ys.append(torch.as_tensor(item[1]))
    if not xs:
        raise ValueError(f"{where} is empty")
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise ValueError(
            f"{where}: items have different shapes {sorted(shapes)[:3]}; give them one size "
            "(for image folders: --center-crop N)"
        )
    return torch.stack(xs), torch.stack(ys)


def _items(dataset: Any) -> Iterable[Any]:
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return (dataset[i] for i in range(len(dataset)))
    return iter(dataset)


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        Image = None
    if Image is not None and isinstance(x, Image.Image):
        return torch.from_numpy(np.asarray(x.convert("RGB")).transpose(2, 0, 1).copy())
    return torch.as_tensor(np.asarray(x))


def tensors_of(
    data: Any, *, device: str | torch.device | None = None, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) tensors the measures take, from an (x, y) pair, a DataLoader or a Dataset.

    A DataLoader's batches are concatenated in the order it yields them (with a shuffling
    loader, that order changes between calls: pass one with ``shuffle=False`` for a fixed set).

    Args:
        data: ``(x, y)`` tensors, a ``torch.utils.data.DataLoader`` of (x, y) batches, or a
            Dataset of (x, y) items.
        device: where the tensors go (None: where they are).
        limit: keep the first ``limit`` examples (None: all).

    Returns:
        (x (N, ...), y (N, ...)): uint8 images stay uint8 (the measures divide by 255).

    Raises:
        ValueError: anything else, or x and y of different lengths.
    """
    from torch.utils.data import DataLoader

    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        x, y = data
    elif isinstance(data, DataLoader):
        xs, ys, n = [], [], 0
        for batch in data:
            if not isinstance(batch, tuple | list) or len(batch) != 2:
                raise ValueError(
                    f"the DataLoader yields {type(batch).__name__}, not (x, y) batches"
                )
            xs.append(_as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
            n += len(ys[-1])
            if limit is not None and n >= limit:
                break
        if not xs:
            raise ValueError("the DataLoader yields no batches")
        x, y = torch.cat(xs), torch.cat(ys)
    elif hasattr(data, "__getitem__") or hasattr(data, "__iter__"):
        x, y = stack_dataset(data)
    else:
        raise ValueError(
            f"cannot take data from a {type(data).__name__}: give (x, y) tensors, a DataLoader "
            "or a Dataset of (x, y) items"
        )
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y
