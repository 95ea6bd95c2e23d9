"""Extra training data (the RST setting): a file of images and (pseudo-)labels mixed into batches.

Robust self-training (Carmon et al.) adds 500K pseudo-labeled images to CIFAR-10 and draws a fixed
fraction (half) of every batch from them. Here the extra set is one file, read without ever
unpickling anything:

- ``.npz`` (``numpy.savez``), loaded with ``allow_pickle=False``;
- ``.pt``/``.pth``, a dict of tensors loaded with ``torch.load(weights_only=True)``.

It holds images ``x`` as uint8 0..255, (M, 3, H, W) or (M, H, W, 3), and labels ``y`` (M,)
integers in [0, num_classes). The names of the RST release (``data``,
``extrapolated_targets``) are accepted too. The RST pickle itself is converted once, by the user,
on a machine where they trust it::

    import pickle, numpy as np
    d = pickle.load(open("ti_500K_pseudo_labeled.pickle", "rb"))
    np.savez("ti_500K.npz", x=d["data"], y=np.asarray(d["extrapolated_targets"]))

Reference: Carmon et al., "Unlabeled Data Improves Adversarial Robustness", NeurIPS 2019
(github.com/yaircarmon/semisup-adv, SemiSupervisedSampler).
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from awp.checkpoint import safe_torch_load
from awp.data import Split, iterate_batches

log = logging.getLogger(__name__)

IMAGE_KEYS = ("x", "images", "data")
LABEL_KEYS = ("y", "labels", "targets", "extrapolated_targets")
SUFFIXES = (".npz", ".pt", ".pth")
FORMAT_HINT = (
    "save it with numpy.savez(path, x=uint8 images (M, H, W, 3) or (M, 3, H, W), "
    "y=int labels (M,)) or torch.save({'x': ..., 'y': ...}, path)"
)


def load_extra_data(
    path: str | os.PathLike, *, image_shape: tuple[int, int, int], num_classes: int
) -> Split:
    """Read an extra-data file into a CPU :class:`~awp.data.Split` (uint8 (M, 3, H, W), int64).

    Args:
        path: ``.npz`` or ``.pt``/``.pth`` file (see the module docstring).
        image_shape: (3, H, W) of the training images; the extra images must match.
        num_classes: labels must lie in [0, num_classes).

    Returns:
        The images and labels on the CPU (batches are moved to the device as they are drawn,
        so a 500K-image file need not fit in GPU memory).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unsupported suffix, a pickled or unreadable file, missing arrays, wrong
            dtype, image shape or label range; the message says which and how to fix it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"extra data file {path} does not exist (or is not a file)")
    arrays = _read(path)
    x = _pick(arrays, IMAGE_KEYS, path, "images")
    y = _pick(arrays, LABEL_KEYS, path, "labels")
    x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    y = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    if x.dtype != torch.uint8:
        raise ValueError(
            f"extra data {path}: images are {x.dtype}, expected uint8 0..255; convert float "
            f"images in [0, 1] with (x * 255).round().astype('uint8')"
        )
    c, h, w = image_shape
    if x.ndim == 4 and tuple(x.shape[1:]) == (c, h, w):
        pass
    elif x.ndim == 4 and tuple(x.shape[1:]) == (h, w, c):
        x = x.permute(0, 3, 1, 2)
    else:
        raise ValueError(
            f"extra data {path}: images have shape {tuple(x.shape)}, expected (M, {c}, {h}, {w}) "
            f"or (M, {h}, {w}, {c}) to match the training images"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"extra data {path}: labels have shape {tuple(y.shape)}, expected ({len(x)},), one "
            "per image"
        )
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"extra data {path}: labels are {y.dtype}, expected integers")
    y = y.to(torch.int64)
    if len(y) == 0:
        raise ValueError(f"extra data {path} holds no images")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"extra data {path}: labels span [{lo}, {hi}], but the dataset has {num_classes} "
            f"classes (labels 0..{num_classes - 1}); unlabeled points need pseudo-labels"
        )
    log.info("extra data %s: %d images, %d classes used", path, len(y), int(y.unique().numel()))
    return Split(x.contiguous(), y.contiguous())


def _read(path: Path) -> dict:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"extra data {path}: unsupported suffix {suffix!r}; use .npz or .pt ({FORMAT_HINT}). "
            "Pickle files are never read: convert them once (see awp.extra_data)"
        )
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except ValueError as err:  # object arrays need pickle, which stays off
            raise ValueError(
                f"extra data {path} holds pickled (object) arrays, which are never loaded; "
                f"{FORMAT_HINT}"
            ) from err
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"extra data {path} is not a readable .npz file ({err})") from err
    obj = safe_torch_load(path, what="extra data", trust_hint=FORMAT_HINT)
    if not isinstance(obj, dict):
        raise ValueError(f"extra data {path} holds a {type(obj).__name__}; {FORMAT_HINT}")
    return obj


def _pick(arrays: dict, keys: tuple[str, ...], path: Path, what: str):
    for k in keys:
        if k in arrays:
            return arrays[k]
    raise ValueError(
        f"extra data {path} has no {what} array: looked for {', '.join(keys)}, found "
        f"{', '.join(map(str, arrays)) or 'nothing'}; {FORMAT_HINT}"
    )


def extra_count(n_train: int, fraction: float) -> int:
    """Extra examples that go with ``n_train`` training examples so they make ``fraction``."""
    return int(round(n_train * fraction / (1.0 - fraction)))


def mixed_batches(
    n_train: int,
    n_extra: int,
    batch_size: int,
    fraction: float,
    *,
    generator: torch.Generator,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Index batches mixing the training set and the extra set at a fixed fraction.

    An epoch is one shuffled pass over the training set in batches of
    ``round(batch_size * (1 - fraction))``; each is topped up with extra examples drawn uniformly
    with replacement, so that they make ``fraction`` of the batch, and the mixed batch is
    shuffled (so that ranks of a distributed run each get a mix).

    Args:
        n_train: training examples (>= 1); n_extra: extra examples (>= 1).
        batch_size: examples per mixed batch (>= 2).
        fraction: share of each batch from the extra set, in (0, 1) (Carmon et al.: 0.5).
        generator: CPU generator of every draw.

    Yields:
        (train indices (b,), extra indices (e,), order (b + e,)): the batch is
        ``cat([train[train_idx], extra[extra_idx]])[order]``.

    Reference: Carmon et al., NeurIPS 2019 (SemiSupervisedSampler: unsup_fraction 0.5).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"extra fraction {fraction} must be in (0, 1)")
    if n_train < 1 or n_extra < 1:
        raise ValueError(f"need training and extra examples, got {n_train} and {n_extra}")
    per_batch = max(1, int(round(batch_size * (1.0 - fraction))))
    for idx in iterate_batches(n_train, per_batch, shuffle=True, generator=generator):
        e = extra_count(len(idx), fraction)
        extra_idx = torch.randint(0, n_extra, (e,), generator=generator)
        order = torch.randperm(len(idx) + e, generator=generator)
        yield idx, extra_idx, order


def batches_per_epoch(n_train: int, batch_size: int, fraction: float | None) -> int:
    """Number of batches :func:`mixed_batches` (or plain batching when fraction is None) yields."""
    if fraction is None:
        return max(1, math.ceil(n_train / batch_size))
    per_batch = max(1, int(round(batch_size * (1.0 - fraction))))
    return max(1, math.ceil(n_train / per_batch))
