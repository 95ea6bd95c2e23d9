"""ImageFolder datasets: a folder or a tar archive of ``train/<class>/*`` and ``test/<class>/*``.

The files are read without extracting anything (archives with :mod:`tarfile`), decoded once to
uint8 arrays with a progress bar, and cached as ``.npz`` keyed by the source's paths, sizes and
modification times, so the next load takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from awp.io import atomic_write_with
from awp.progress import progress_bar

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
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
    elif is_archive(path):
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


def path_name(path: Path) -> str:
    name = path.resolve().name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"dataset path '{path}' does not exist: pass an ImageFolder directory or .tar.gz "
            f"({LAYOUT_HINT}), or a dataset name ('sample', 'cifar10', 'cifar100', 'svhn')"
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


def _decode(
    files: ImageFolderFiles, path: Path, *, progress: bool, center_crop: int | None = None
) -> dict[str, np.ndarray]:
    """Decode every image to RGB uint8; labels index the sorted class names. With
    ``center_crop`` N each image is first resized (shorter side to round(N / 0.875),
    bilinear) and centre-cropped to N x N, ImageNet's evaluation transform."""
    classes = sorted(files["train"])
    total = sum(len(v) for split in SPLITS for v in files[split].values())
    bar = progress_bar(
        total=total,
        desc=f"decoding {path.name}",
        unit="img",
        enabled=progress and total > _PROGRESS_MIN_IMAGES,
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
                            rgb = img.convert("RGB")
                            if center_crop is not None:
                                rgb = _resize_and_crop(rgb, center_crop)
                            pixels = np.asarray(rgb)  # (H, W, 3)
                    except Exception as err:  # PIL raises many types for bad files
                        raise ValueError(f"cannot decode image {where}: {err}") from err
                    if shape is None:
                        shape = pixels.shape
                    if pixels.shape != shape:
                        raise ValueError(
                            f"image {where} is {pixels.shape[1]}x{pixels.shape[0]}, others are "
                            f"{shape[1]}x{shape[0]}: all images must have the same size "
                            "(--center-crop N resizes and crops each to N x N)"
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


def _resize_and_crop(img: Image.Image, size: int) -> Image.Image:
    """The shorter side to round(size / 0.875), then the centre size x size (PIL bilinear,
    as torchvision's Resize and CenterCrop on images)."""
    short = round(size / 0.875)
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


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


def _cache_path(path: Path, center_crop: int | None = None) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path_name(path)) or "dataset"
    crop = "" if center_crop is None else f"-crop{center_crop}"
    return cache_dir() / f"{stem}-{_source_key(path)[:20]}{crop}.npz"


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
    """Write atomically; a failure only costs the next load a decode."""

    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    try:
        atomic_write_with(cache, fill)
    except OSError as err:
        logger.warning("could not write cache %s (%s); the next load decodes again", cache, err)


def load_imagefolder_arrays(
    path: Path, *, progress: bool, center_crop: int | None = None
) -> dict[str, np.ndarray]:
    _check_exists(path)  # before hashing, so the error names the path and the fix
    cache = _cache_path(path, center_crop)
    arrays = _read_cache(cache)
    if arrays is not None:
        logger.info("using cached decoded images %s", cache)
        return arrays
    files = read_imagefolder_files(path)
    arrays = _decode(files, path, progress=progress, center_crop=center_crop)
    _write_cache(cache, arrays)
    logger.info("decoded %s, cached as %s", path, cache)
    return arrays
