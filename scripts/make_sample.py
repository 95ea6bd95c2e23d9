"""Build the embedded "sample" dataset: a class-balanced subset of real CIFAR-10.

Picks, with a seeded generator, `--per-class-train` training and `--per-class-test` test
images per class from the shared CIFAR-10 JPEG archive and writes them, as the original JPEG
bytes (never re-encoded), to a reproducible ImageFolder ``.tar.gz`` that ``awp.data`` reads
with the same reader as any other archive. Next to it goes ``manifest.json`` with the counts,
the seed and the sha256 of the source and of the result.

    python scripts/make_sample.py            # writes awp/sample/cifar10_sample.tar.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from awp.imagefolder import SPLITS, ImageFolderFiles, read_imagefolder_files  # noqa: E402

DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_OUT = REPO_ROOT / "awp" / "sample" / "cifar10_sample.tar.gz"
MAX_BYTES = 6_000_000


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def choose(files: ImageFolderFiles, per_class: dict[str, int], *, seed: int) -> ImageFolderFiles:
    """Seeded choice of `per_class[split]` files per class, kept in name order.

    Args:
        files: split -> class -> [(file name, bytes)], as read by read_imagefolder_files.
        per_class: split -> number of files to keep per class.
        seed: seed of the choice; splits, then classes, are visited in sorted order.

    Returns:
        The chosen subset, same structure.
    """
    rng = np.random.default_rng(seed)
    chosen: ImageFolderFiles = {}
    for split in SPLITS:
        chosen[split] = {}
        for cls in sorted(files[split]):
            items = files[split][cls]
            k = per_class[split]
            if k > len(items):
                raise ValueError(
                    f"{split}/{cls} has {len(items)} images, fewer than the {k} requested; "
                    f"lower --per-class-{split}"
                )
            idx = np.sort(rng.choice(len(items), size=k, replace=False))
            chosen[split][cls] = [items[i] for i in idx]
    return chosen


def write_tar_gz(files: ImageFolderFiles, out: Path) -> None:
    """Write train/<class>/<file> and test/<class>/<file> to a byte-reproducible .tar.gz.

    Fixed mtimes, owners and modes and a gzip header without time or name make the same
    selection give the same sha256 on every run. Written atomically.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for split in SPLITS:
                        for cls in sorted(files[split]):
                            for fname, data in files[split][cls]:
                                info = tarfile.TarInfo(f"{split}/{cls}/{fname}")
                                info.size = len(data)
                                info.mtime = 0
                                info.mode = 0o644
                                tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the archive ships in the package
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(obj: dict, path: Path) -> None:
    """Write JSON atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="CIFAR-10 ImageFolder archive or folder (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output .tar.gz (default: %(default)s)"
    )
    parser.add_argument("--per-class-train", type=int, default=400)
    parser.add_argument("--per-class-test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=MAX_BYTES,
        help="fail if the archive is larger (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.per_class_train < 1 or args.per_class_test < 1:
        parser.error("--per-class-train and --per-class-test must be >= 1")
    if not args.out.name.endswith(".tar.gz"):
        parser.error(f"--out must end with .tar.gz, got {args.out}")

    files = read_imagefolder_files(args.source)
    per_class = {"train": args.per_class_train, "test": args.per_class_test}
    chosen = choose(files, per_class, seed=args.seed)
    write_tar_gz(chosen, args.out)

    size = args.out.stat().st_size
    counts = {s: sum(len(v) for v in chosen[s].values()) for s in SPLITS}
    manifest = {
        "file": args.out.name,
        "sha256": sha256_file(args.out),
        "bytes": size,
        "source": args.source.name,
        "source_sha256": sha256_file(args.source) if args.source.is_file() else None,
        "seed": args.seed,
        "per_class": per_class,
        "counts": counts,
        "classes": sorted(chosen["train"]),
        "encoding": "original JPEG bytes from the source, not re-encoded",
        "made_by": "scripts/make_sample.py",
    }
    write_json(manifest, args.out.parent / "manifest.json")
    print(f"wrote {args.out} ({size:,} bytes, {counts['train']} train + {counts['test']} test)")
    if size > args.max_bytes:
        print(f"error: {args.out} is {size:,} bytes, over --max-bytes {args.max_bytes:,}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
