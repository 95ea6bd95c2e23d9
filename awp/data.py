"""Datasets as uint8 tensors on the device, with a seeded validation split.

Reads the embedded CIFAR-10 sample, torchvision datasets (CIFAR-10/100, SVHN; downloaded only
when asked), ImageFolder folders or archives (:mod:`awp.imagefolder`; ImageNet-style resize and
centre crop with ``center_crop``), tensors files and ``py:module:function`` datasets
(:mod:`awp.data_sources`). Whole datasets live on the target device as uint8 ``(N, 3, H, W)``
tensors (CIFAR-10 train is 150 MB; data from elsewhere may also be float images in [0, 1] or
float tensors of any shape), so training never waits on a DataLoader; batching is index
arithmetic (:func:`iterate_batches`) and augmentation batched tensor ops (:mod:`awp.augment`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from awp.data_config import DataConfig as DataConfig
from awp.data_sources import (
    DATASET_PREFIX,
    is_tensors_file,
    load_dataset_function,
    load_tensors_file,
)
from awp.data_sources import tensors_of as tensors_of  # a DataLoader or (x, y) from Python
from awp.imagefolder import (
    ARCHIVE_SUFFIXES,
    LAYOUT_HINT,
    load_imagefolder_arrays,
    path_name,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
TORCHVISION_DATASETS = ("cifar10", "cifar100", "svhn")
SAMPLE_NAME = "sample"
SAMPLE_PATH = Path(__file__).resolve().parent / "sample" / "cifar10_sample.tar.gz"

# Published per-channel statistics in [0,1] units (CIFAR-10 as used by the official AWP code).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)


@dataclass
class Split:
    """Images and labels of one split.

    Attributes:
        x: images, (N, C, H, W) uint8 in [0, 255] (data from elsewhere: float images in
            [0, 1], or tensors (N, ...) of any shape for models on other inputs).
        y: labels, (N,) int64 in [0, num_classes) (or float targets).
    """

    x: torch.Tensor  # (N, C, H, W) uint8
    y: torch.Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if self.x.ndim < 1 or self.y.ndim < 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                "Split needs x of shape (N, C, H, W) (or (N, ...)) and y of shape (N,), got "
                f"x {tuple(self.x.shape)} and y {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class DataBundle:
    """Train, validation and test splits of one dataset, on one device.

    Attributes:
        train: training split (validation images removed).
        val: seeded random subset held out of the original training set (may be empty).
        test: the dataset's test split, untouched.
        classes: class names; label i is ``classes[i]``.
        mean: per-channel mean in [0,1] units, for the model's normalization layer (empty
            for data that are not images).
        std: per-channel standard deviation in [0,1] units (empty likewise).
        name: "sample", "cifar10", "cifar100", "svhn", or the folder/archive name.
    """

    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class _Raw:
    """A dataset as loaded, before the validation split; CPU tensors."""

    train_x: torch.Tensor  # (N, 3, H, W) uint8 (from elsewhere: float, or (N, ...))
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, 3, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    classes: tuple[str, ...]
    name: str
    mean: tuple[float, float, float] | None  # None: compute on the train split
    std: tuple[float, float, float] | None


# ----------------------------------------------------------------------------- public API


def load_data(
    cfg: DataConfig, device: torch.device | str = "cpu", *, progress: bool = True
) -> DataBundle:
    """Load a dataset as uint8 tensors on `device`, with a seeded validation split.

    Args:
        cfg: which dataset, where it lives, and the validation split.
        device: where the returned tensors live.
        progress: show a progress bar while decoding large image archives.

    Returns:
        DataBundle whose splits hold x (N, 3, H, W) uint8 and y (N,) int64 on `device`.
        `val` is `cfg.val_size` training images picked with `cfg.split_seed` and removed
        from `train`; `test` is the dataset's test split.

    Raises:
        FileNotFoundError: the dataset is not where it was looked for.
        ValueError: unknown dataset name, malformed layout, or val_size too large.
    """
    device = torch.device(device)
    raw = _load_raw(cfg, progress=progress)
    n_train = raw.train_y.shape[0]
    if cfg.val_size >= n_train:
        raise ValueError(
            f"val_size={cfg.val_size} leaves no training images: {raw.name} has {n_train} "
            f"training images; use a val_size below {n_train} (0 disables validation)"
        )
    val_idx, train_idx = _split_indices(n_train, cfg.val_size, seed=cfg.split_seed)
    if cfg.train_size:
        if cfg.train_size > len(train_idx):
            raise ValueError(
                f"train_size={cfg.train_size} but {raw.name} has {len(train_idx)} training "
                f"images after the validation split; use at most that (0 = all)"
            )
        # split_seed + 1, not awp.seeds.derive_seed: which images are training images is part
        # of every checkpoint (its data config); another derivation would make analyses of
        # existing checkpoints measure "training" images their model never saw.
        keep = fixed_subset(len(train_idx), cfg.train_size, seed=cfg.split_seed + 1)
        train_idx = train_idx[keep]
    train = Split(raw.train_x[train_idx].to(device), raw.train_y[train_idx].to(device))
    val = Split(raw.train_x[val_idx].to(device), raw.train_y[val_idx].to(device))
    test = Split(raw.test_x.to(device), raw.test_y.to(device))
    if raw.mean is None or raw.std is None:
        mean, std = _stats(train.x)
    else:
        mean, std = raw.mean, raw.std
    logger.info(
        "loaded %s: %d train, %d val, %d test, %d classes, on %s",
        raw.name,
        len(train),
        len(val),
        len(test),
        len(raw.classes),
        device,
    )
    return DataBundle(
        train=train, val=val, test=test, classes=raw.classes, mean=mean, std=std, name=raw.name
    )


def iterate_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield index batches covering range(n) once, in order or shuffled.

    Args:
        n: number of items (>= 0).
        batch_size: indices per batch (>= 1); the last batch may be smaller.
        shuffle: permute the indices (with `generator`, or the global RNG if None).
        generator: CPU generator for the permutation.
        drop_last: skip a final batch smaller than `batch_size`.

    Returns:
        Iterator of CPU int64 index tensors, (B,) each.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def capped_notice(n: int, available: int, *, flag: str) -> int:
    """The examples a request for ``n`` gets (0 = all): ``available`` at most, with a notice
    naming ``flag`` (e.g. ``--n-examples``) when it asked for more than the split holds."""
    if n > available:
        logger.warning(
            "%s %d asks for more than the %d images of the split: all %d are used",
            flag or "the subset size",
            n,
            available,
            available,
        )
    return available if n == 0 else min(n, available)


def fixed_subset(n: int, k: int, *, seed: int) -> torch.Tensor:
    """Pick k distinct indices from range(n), the same ones for the same seed.

    Used for a fixed evaluation subset (e.g. training-set robust accuracy for the gap).

    Args:
        n: size of the set (>= 0).
        k: number of indices (>= 0); k >= n returns all of range(n).
        seed: seed of the choice.

    Returns:
        Sorted CPU int64 tensor of min(k, n) distinct indices.
    """
    if n < 0 or k < 0:
        raise ValueError(f"n and k must be >= 0, got n={n}, k={k}")
    if k >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:k].sort().values


def channel_stats(
    x: torch.Tensor, *, chunk: int = 4096
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and (population) standard deviation of uint8 images in [0,1] units.

    Args:
        x: images, (N, C, H, W) uint8, any device.
        chunk: images per step, to bound the float64 working memory.

    Returns:
        (mean, std), one float per channel.
    """
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(
            f"channel_stats needs a non-empty uint8 (N, C, H, W) tensor, got dtype {x.dtype} "
            f"and shape {tuple(x.shape)}"
        )
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk].to(torch.float64) / 255.0  # (B, C, H, W)
        total += xb.sum(dim=(0, 2, 3))
        total_sq += xb.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel statistics of images (uint8, or floats in [0, 1]); none for other data."""
    if x.ndim != 4 or not len(x):
        return (), ()
    if x.dtype == torch.uint8:
        return channel_stats(x)
    if not x.is_floating_point():
        return (), ()
    xd = x.double()
    mean = xd.mean(dim=(0, 2, 3))
    std = xd.var(dim=(0, 2, 3), unbiased=False).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _split_indices(n: int, val_size: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (val, train) partition of range(n); both sorted so the data keep their order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:val_size].sort().values, perm[val_size:].sort().values


# ----------------------------------------------------------------------------- dataset sources


def _known_names() -> str:
    return ", ".join(repr(s) for s in (SAMPLE_NAME, *TORCHVISION_DATASETS))


def _normalize_name(name: str) -> str:
    """'CIFAR-10' -> 'cifar10', so the usual spellings of the torchvision names work."""
    return re.sub(r"[-_ ]", "", name.strip().lower())


def _looks_like_path(s: str) -> bool:
    return (
        os.sep in s
        or "/" in s
        or s.startswith((".", "~"))
        or s.lower().endswith((*ARCHIVE_SUFFIXES, ".gz"))
    )


def _load_raw(cfg: DataConfig, *, progress: bool) -> _Raw:
    if cfg.dataset.startswith(DATASET_PREFIX):
        return _from_arrays(load_dataset_function(cfg.dataset), name=cfg.dataset)
    if cfg.center_crop is not None and not _is_folder_source(cfg.dataset):
        raise ValueError(
            f"center_crop (--center-crop) resizes and crops images of a folder or archive; "
            f"{cfg.dataset} is not one: drop it (or give the model an input size instead)"
        )
    name = _normalize_name(cfg.dataset)
    if name == SAMPLE_NAME:
        if not SAMPLE_PATH.is_file():
            raise FileNotFoundError(
                f"the embedded sample '{SAMPLE_PATH}' is missing from the installed package; "
                "reinstall awp-landscape or regenerate it with scripts/make_sample.py"
            )
        return _load_imagefolder(
            SAMPLE_PATH, name=SAMPLE_NAME, progress=progress, center_crop=cfg.center_crop
        )
    if name in TORCHVISION_DATASETS:
        return _load_torchvision(name, cfg.data_root, download=cfg.download)
    path = Path(cfg.dataset).expanduser()
    if is_tensors_file(cfg.dataset):
        return _from_arrays(load_tensors_file(path), name=path.stem)
    if path.exists() or _looks_like_path(cfg.dataset):
        return _load_imagefolder(
            path, name=path_name(path), progress=progress, center_crop=cfg.center_crop
        )
    raise ValueError(
        f"unknown dataset '{cfg.dataset}': use one of {_known_names()}, or a path to an "
        f"ImageFolder directory or .tar.gz ({LAYOUT_HINT})"
    )


def _load_torchvision(name: str, data_root: str, *, download: bool) -> _Raw:
    from torchvision import datasets  # imported here: only these three datasets need it

    root = Path(data_root).expanduser()
    try:
        if name == "svhn":
            where = f"{root / 'train_32x32.mat'} and {root / 'test_32x32.mat'}"
            train = datasets.SVHN(str(root), split="train", download=download)
            test = datasets.SVHN(str(root), split="test", download=download)
            # SVHN arrays are already (N, 3, 32, 32); torchvision maps digit label 10 to 0.
            train_x, test_x = train.data, test.data
            train_y, test_y = train.labels, test.labels
            classes = tuple(str(d) for d in range(10))
            mean, std = SVHN_MEAN, SVHN_STD
        else:
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            where = str(root / cls.base_folder)
            train = cls(str(root), train=True, download=download)
            test = cls(str(root), train=False, download=download)
            # CIFAR arrays are (N, 32, 32, 3).
            train_x, test_x = train.data.transpose(0, 3, 1, 2), test.data.transpose(0, 3, 1, 2)
            train_y, test_y = train.targets, test.targets
            classes = tuple(train.classes)
            mean, std = (
                (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
            )
    except RuntimeError as err:
        if download:
            raise
        raise FileNotFoundError(
            f"{name} not found under data root '{root}' (looked for {where}): pass --download "
            "(DataConfig(download=True)) to fetch it, or --data-root pointing at the folder "
            "that contains it"
        ) from err
    return _Raw(
        train_x=torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.uint8)),
        train_y=torch.as_tensor(np.asarray(train_y, dtype=np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.uint8)),
        test_y=torch.as_tensor(np.asarray(test_y, dtype=np.int64)),
        classes=classes,
        name=name,
        mean=mean,
        std=std,
    )


def _is_cifar10_name(name: str) -> bool:
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    return "cifar10" in flat and "cifar100" not in flat


def _is_folder_source(dataset: str) -> bool:
    """The bundled sample, a folder or an archive (what ``center_crop`` applies to)."""
    if dataset.startswith(DATASET_PREFIX) or is_tensors_file(dataset):
        return False
    return _normalize_name(dataset) not in TORCHVISION_DATASETS


def _from_arrays(arrays: dict, *, name: str) -> _Raw:
    """A dataset from elsewhere (tensors file, dataset function): statistics from its
    training split when it holds images."""
    return _Raw(
        train_x=arrays["train_x"],
        train_y=arrays["train_y"],
        test_x=arrays["test_x"],
        test_y=arrays["test_y"],
        classes=tuple(arrays["classes"]),
        name=name,
        mean=None,
        std=None,
    )


def _load_imagefolder(
    path: Path, *, name: str, progress: bool, center_crop: int | None = None
) -> _Raw:
    """Decoded ImageFolder data, from the cache when it matches the source."""
    arrays = load_imagefolder_arrays(path, progress=progress, center_crop=center_crop)
    classes = tuple(str(c) for c in arrays["classes"].tolist())
    cifar10 = name == SAMPLE_NAME or _is_cifar10_name(name)
    return _Raw(
        train_x=torch.from_numpy(arrays["train_x"]),
        train_y=torch.from_numpy(arrays["train_y"]),
        test_x=torch.from_numpy(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"]),
        classes=classes,
        name=name,
        mean=CIFAR10_MEAN if cifar10 else None,
        std=CIFAR10_STD if cifar10 else None,
    )
