"""Datasets as uint8 tensors on the device, a seeded validation split, batched augmentation.

This module is the data IO shell: it reads torchvision datasets, ImageFolder folders and
``.tar.gz`` archives (and the embedded CIFAR-10 sample), caches decoded archives as ``.npz``
and shows a progress bar while decoding. Everything after loading (``to_float``, ``augment``,
``iterate_batches``, ``fixed_subset``) is pure tensor code with explicit generators.

Whole datasets live on the target device as uint8 ``(N, 3, H, W)`` tensors (CIFAR-10 train is
150 MB), so training never waits on a DataLoader; augmentation is batched tensor indexing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

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

# Same suffixes as torchvision's ImageFolder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
LAYOUT_HINT = (
    "expected train/<class>/*.jpg and test/<class>/*.jpg (optionally inside one top-level folder)"
)
# Bump when the cached array layout changes, so old caches are rebuilt instead of misread.
_CACHE_FORMAT = 1
# Decoding a few thousand 32x32 JPEGs takes about a second; beyond that a bar is worth showing.
_PROGRESS_MIN_IMAGES = 5000

# split -> class -> [(file name, encoded bytes)], classes and files sorted by name.
ImageFolderFiles = dict[str, dict[str, list[tuple[str, bytes]]]]


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to hold out a validation split.

    Args:
        dataset: "sample" (embedded CIFAR-10 subset, 4,000 train + 1,000 test), "cifar10",
            "cifar100", "svhn" (torchvision), or a path to an ImageFolder directory or a
            ``.tar.gz``/``.tgz``/``.tar`` archive with ``train/<class>/*`` and ``test/<class>/*``.
            Names win over paths: write ``./cifar10`` for a local folder of that name.
        data_root: directory where torchvision datasets live (or are downloaded to).
        download: let torchvision download a missing dataset; never happens otherwise.
        val_size: number of training images held out as a validation split (0 = none).
        split_seed: seed of the random validation split.
        train_size: keep only this many training images (a seeded subset of what the
            validation split leaves; 0 = all), e.g. to study robust overfitting on small data.
    """

    dataset: str = "sample"
    data_root: str = "data"
    download: bool = False
    val_size: int = 1000
    split_seed: int = 0
    train_size: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ValueError(
                f"dataset must be a non-empty string, got {self.dataset!r}: use 'sample', "
                "'cifar10', 'cifar100', 'svhn' or a path to an ImageFolder folder or .tar.gz"
            )
        if isinstance(self.val_size, bool) or not isinstance(self.val_size, int):
            raise ValueError(f"val_size must be an int, got {self.val_size!r}")
        if self.val_size < 0:
            raise ValueError(
                f"val_size must be >= 0 (0 = no validation split), got {self.val_size}"
            )
        if isinstance(self.train_size, bool) or not isinstance(self.train_size, int):
            raise ValueError(f"train_size must be an int, got {self.train_size!r}")
        if self.train_size < 0:
            raise ValueError(
                f"train_size must be >= 0 (0 = every training image), got {self.train_size}"
            )
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int):
            raise ValueError(f"split_seed must be an int, got {self.split_seed!r}")


@dataclass
class Split:
    """Images and labels of one split.

    Attributes:
        x: images, (N, C, H, W) uint8 in [0, 255].
        y: labels, (N,) int64 in [0, num_classes).
    """

    x: torch.Tensor  # (N, C, H, W) uint8
    y: torch.Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                "Split needs x of shape (N, C, H, W) and y of shape (N,), got "
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
        mean: per-channel mean in [0,1] units, for the model's normalization layer.
        std: per-channel standard deviation in [0,1] units.
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

    train_x: torch.Tensor  # (N, 3, H, W) uint8
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
        progress: show a tqdm bar while decoding large image archives.

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
        keep = fixed_subset(len(train_idx), cfg.train_size, seed=cfg.split_seed + 1)
        train_idx = train_idx[keep]
    train = Split(raw.train_x[train_idx].to(device), raw.train_y[train_idx].to(device))
    val = Split(raw.train_x[val_idx].to(device), raw.train_y[val_idx].to(device))
    test = Split(raw.test_x.to(device), raw.test_y.to(device))
    if raw.mean is None or raw.std is None:
        mean, std = channel_stats(train.x)
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


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Convert uint8 images to float32 in [0, 1].

    Args:
        x: images, (N, C, H, W) uint8 (any shape works), any device.

    Returns:
        float32 tensor of the same shape and device, x / 255.
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 images, got dtype {x.dtype}")
    return x.to(torch.float32).div_(255.0)


def augment(
    x: torch.Tensor, *, generator: torch.Generator, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop with reflect padding and random horizontal flip, as batched tensor ops.

    Equivalent per image to: reflect-pad by `padding` pixels, crop an H x W window at a
    uniformly random offset, flip left-right with probability 1/2. Reflect padding is
    folded into the gather indices, so no padded copy of the batch is made.

    Args:
        x: images, (N, C, H, W) uint8, any device.
        generator: CPU generator for the random offsets and flips; the draws are moved to
            x.device, so a seed gives the same result on every device.
        padding: pixels of reflect padding on each side, 0 <= padding < min(H, W).
        flip: apply random horizontal flips.

    Returns:
        float32 images in [0, 1], (N, C, H, W), on x.device.

    Reference: the standard CIFAR augmentation (RandomCrop(32, padding=4) and
    RandomHorizontalFlip) of the official AWP code, with reflect instead of zero padding.
    """
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(
            f"augment expects uint8 images (N, C, H, W), got dtype {x.dtype} and shape "
            f"{tuple(x.shape)}; augment the uint8 tensors from load_data"
        )
    if generator.device.type != "cpu":
        raise ValueError(
            f"augment needs a CPU torch.Generator (got one on {generator.device}) so that "
            "results match across devices"
        )
    n, c, h, w = x.shape
    if not 0 <= padding < min(h, w):
        raise ValueError(f"padding must be in [0, {min(h, w)}) for {h}x{w} images, got {padding}")
    dev = x.device
    dy, dx, flips = _crop_offsets_and_flips(n, generator, padding)
    dy, dx, flips = dy.to(dev), dx.to(dev), flips.to(dev)
    rows = dy[:, None] + torch.arange(h, device=dev)  # (N, H), padded coordinates
    cols = dx[:, None] + torch.arange(w, device=dev)  # (N, W), padded coordinates
    if flip:
        # Reading the crop's columns right to left is the flip of the crop.
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    rows = _reflect(rows - padding, h)
    cols = _reflect(cols - padding, w)
    n_idx = torch.arange(n, device=dev)[:, None, None, None]
    c_idx = torch.arange(c, device=dev)[None, :, None, None]
    out = x[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)
    return to_float(out)


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


def read_imagefolder_files(path: str | os.PathLike) -> ImageFolderFiles:
    """Read the encoded image files of an ImageFolder directory or tar archive.

    The layout is ``train/<class>/<file>`` and ``test/<class>/<file>``, optionally wrapped in
    one top-level folder. Hidden files and non-image files are skipped. Archives are read
    directly with `tarfile`, nothing is extracted to disk.

    Args:
        path: a directory, or a ``.tar.gz``/``.tgz``/``.tar`` file.

    Returns:
        split ("train", "test") -> class name -> [(file name, encoded bytes)], classes and
        files sorted by name; both splits have the same, non-empty set of classes.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the layout is not the one expected, or the class folders differ.
    """
    path = Path(path).expanduser()
    _check_exists(path)
    if path.is_dir():
        files = _read_folder(path)
    elif _is_archive(path):
        files = _read_archive(path)
    else:
        raise ValueError(
            f"'{path}' is neither a directory nor a .tar.gz/.tgz/.tar archive; {LAYOUT_HINT}"
        )
    _check_layout(files, path)
    return files


def cache_dir() -> Path:
    """Directory of decoded-archive caches: $AWP_CACHE, else ~/.cache/awp-landscape."""
    env = os.environ.get("AWP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "awp-landscape"


# ----------------------------------------------------------------------------- augmentation


def _crop_offsets_and_flips(
    n: int, generator: torch.Generator, padding: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the random crop offsets and flip decisions that `augment` uses.

    Always draws all three, in this order, so the stream is the same with or without flips.

    Args:
        n: number of images.
        generator: CPU generator.
        padding: reflect padding; offsets are in [0, 2 * padding] in padded coordinates.

    Returns:
        (dy, dx, flips): (N,) int64 row and column offsets of the crop's top-left corner in
        the padded image, and (N,) bool flip decisions; all on the CPU.
    """
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flips


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Map coordinates in [-(size-1), 2*(size-1)] into [0, size) by mirroring at the edges.

    Edge pixels are not repeated (-1 -> 1, size -> size - 2), as in F.pad(mode="reflect").
    """
    i = i.abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)


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
    name = _normalize_name(cfg.dataset)
    if name == SAMPLE_NAME:
        if not SAMPLE_PATH.is_file():
            raise FileNotFoundError(
                f"the embedded sample '{SAMPLE_PATH}' is missing from the installed package; "
                "reinstall awp-landscape or regenerate it with scripts/make_sample.py"
            )
        return _load_imagefolder(SAMPLE_PATH, name=SAMPLE_NAME, progress=progress)
    if name in TORCHVISION_DATASETS:
        return _load_torchvision(name, cfg.data_root, download=cfg.download)
    path = Path(cfg.dataset).expanduser()
    if path.exists() or _looks_like_path(cfg.dataset):
        return _load_imagefolder(path, name=_path_name(path), progress=progress)
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


def _path_name(path: Path) -> str:
    name = path.resolve().name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_cifar10_name(name: str) -> bool:
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    return "cifar10" in flat and "cifar100" not in flat


def _load_imagefolder(path: Path, *, name: str, progress: bool) -> _Raw:
    """Decoded ImageFolder data, from the cache when it matches the source."""
    arrays = _load_imagefolder_arrays(path, progress=progress)
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


# ----------------------------------------------------------------------------- ImageFolder IO


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"dataset path '{path}' does not exist: pass an ImageFolder directory or .tar.gz "
            f"({LAYOUT_HINT}), or one of {_known_names()}"
        )


def _read_folder(root: Path) -> ImageFolderFiles:
    base = root
    if not any((root / s).is_dir() for s in SPLITS):
        # Allow one wrapping folder, like an extracted archive: root/<name>/train/...
        subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in SPLITS):
            base = subdirs[0]
        else:
            raise ValueError(f"'{root}' has no train/ or test/ folder: {LAYOUT_HINT}")
    files: ImageFolderFiles = {}
    for split in SPLITS:
        split_dir = base / split
        if not split_dir.is_dir():
            raise ValueError(
                f"'{root}' has no {split}/ folder (looked at '{split_dir}'): {LAYOUT_HINT}"
            )
        classes: dict[str, list[tuple[str, bytes]]] = {}
        for class_dir in sorted(split_dir.iterdir()):
            if not class_dir.is_dir() or class_dir.name.startswith("."):
                continue
            images = [
                (f.name, f.read_bytes())
                for f in sorted(class_dir.iterdir())
                if f.is_file() and _is_image_name(f.name)
            ]
            if images:
                classes[class_dir.name] = images
        files[split] = classes
    return files


def _read_archive(path: Path) -> ImageFolderFiles:
    direct: list[tuple[tuple[str, ...], bytes]] = []  # (split, class, file)
    wrapped: list[tuple[tuple[str, ...], bytes]] = []  # (top, split, class, file)
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = tuple(p for p in PurePosixPath(member.name).parts if p not in (".", "/"))
                if not parts or not _is_image_name(parts[-1]):
                    continue
                if len(parts) == 3 and parts[0] in SPLITS:
                    target = direct
                elif len(parts) == 4 and parts[1] in SPLITS:
                    target = wrapped
                else:
                    continue
                fobj = tar.extractfile(member)
                if fobj is None:
                    continue
                target.append((parts, fobj.read()))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"cannot read archive '{path}' ({err}); {LAYOUT_HINT}") from err
    if direct:
        entries = direct
    else:
        tops = sorted({parts[0] for parts, _ in wrapped})
        if len(tops) > 1:
            raise ValueError(
                f"archive '{path}' has several top-level folders {tops}; {LAYOUT_HINT}"
            )
        entries = [(parts[1:], data) for parts, data in wrapped]
    files: ImageFolderFiles = {split: {} for split in SPLITS}
    for (split, cls, fname), data in entries:
        files[split].setdefault(cls, []).append((fname, data))
    return {
        split: {cls: sorted(files[split][cls]) for cls in sorted(files[split])} for split in SPLITS
    }


def _check_layout(files: ImageFolderFiles, path: Path) -> None:
    for split in SPLITS:
        if not files.get(split):
            raise ValueError(f"no {split} images found in '{path}': {LAYOUT_HINT}")
    train, test = set(files["train"]), set(files["test"])
    if train != test:
        raise ValueError(
            f"class folders of '{path}' differ between train and test: only in train "
            f"{sorted(train - test)}, only in test {sorted(test - train)}; both splits need "
            "the same class folders"
        )


def _decode(files: ImageFolderFiles, path: Path, *, progress: bool) -> dict[str, np.ndarray]:
    """Decode every image to RGB uint8; labels index the sorted class names."""
    classes = sorted(files["train"])
    total = sum(len(v) for split in SPLITS for v in files[split].values())
    bar = tqdm(
        total=total,
        desc=f"decoding {path.name}",
        unit="img",
        disable=not progress or total <= _PROGRESS_MIN_IMAGES,
    )
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes, dtype=np.str_)}
    shape: tuple[int, ...] | None = None
    with bar:
        for split in SPLITS:
            n = sum(len(files[split][c]) for c in classes)
            x: np.ndarray | None = None
            y = np.empty(n, dtype=np.int64)
            i = 0
            for label, cls in enumerate(classes):
                for fname, data in files[split][cls]:
                    where = f"{path}: {split}/{cls}/{fname}"
                    try:
                        with Image.open(io.BytesIO(data)) as img:
                            pixels = np.asarray(img.convert("RGB"))  # (H, W, 3)
                    except Exception as err:  # PIL raises many types for bad files
                        raise ValueError(f"cannot decode image {where}: {err}") from err
                    if shape is None:
                        shape = pixels.shape
                    if pixels.shape != shape:
                        raise ValueError(
                            f"image {where} is {pixels.shape[1]}x{pixels.shape[0]}, others are "
                            f"{shape[1]}x{shape[0]}: all images must have the same size"
                        )
                    if x is None:
                        x = np.empty((n, *shape), dtype=np.uint8)  # (N, H, W, 3)
                    x[i] = pixels
                    y[i] = label
                    i += 1
                    bar.update(1)
            assert x is not None  # _check_layout guarantees images in every split
            arrays[f"{split}_x"] = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, 3, H, W)
            arrays[f"{split}_y"] = y
    return arrays


def _source_key(path: Path) -> str:
    """Hash of what identifies the source's content: path, size and mtime of its files."""
    path = path.resolve()
    h = hashlib.sha256(f"awp-imagefolder-v{_CACHE_FORMAT}|{path}".encode())
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fname in sorted(filenames):
                st = os.stat(os.path.join(dirpath, fname))
                rel = os.path.relpath(os.path.join(dirpath, fname), path)
                h.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        st = path.stat()
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _cache_path(path: Path) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", _path_name(path)) or "dataset"
    return cache_dir() / f"{stem}-{_source_key(path)[:20]}.npz"


def _read_cache(cache: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, corrupt or inconsistent."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("classes", "train_x", "train_y", "test_x", "test_y")}
        n_classes = len(arrays["classes"])
        for split in SPLITS:
            x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
            ok = (
                x.dtype == np.uint8
                and x.ndim == 4
                and x.shape[1] == 3
                and y.dtype == np.int64
                and y.shape == (x.shape[0],)
                and x.shape[0] > 0
                and 0 <= y.min()
                and y.max() < n_classes
            )
            if not ok:
                raise ValueError(f"inconsistent {split} arrays")
    except Exception as err:  # a torn or foreign file: any failure means rebuild
        logger.warning("ignoring unreadable cache %s (%s); rebuilding it", cache, err)
        return None
    return arrays


def _write_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (temp file, then os.replace); a failure only costs the next load."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, cache)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        logger.warning("could not write cache %s (%s); the next load decodes again", cache, err)


def _load_imagefolder_arrays(path: Path, *, progress: bool) -> dict[str, np.ndarray]:
    _check_exists(path)  # before hashing, so the error names the path and the fix
    cache = _cache_path(path)
    arrays = _read_cache(cache)
    if arrays is not None:
        logger.info("using cached decoded images %s", cache)
        return arrays
    files = read_imagefolder_files(path)
    arrays = _decode(files, path, progress=progress)
    _write_cache(cache, arrays)
    logger.info("decoded %s, cached as %s", path, cache)
    return arrays
