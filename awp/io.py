"""The one home of file writing: atomic writes, hashes, library versions, JSON and CSV tables.

Every file the toolkit writes (checkpoints, h5 surfaces, JSON/CSV results, reports, figures,
caches) goes through :func:`atomic_write_with`: the bytes go to a temp file in the same folder,
are fsync'd and renamed over the target, so a process killed at any moment leaves the previous
file (or none) and at worst a stray ``.NAME.*.tmp``, which :func:`remove_stale_temps` clears.

"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy
import torch

import awp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_with(path: str | os.PathLike, fill: Callable[[str], None]) -> Path:
    """Write ``path`` through ``fill(temp path)`` in the same folder, fsync, then rename.

    ``fill`` may be any writer that needs a file name (h5py, ``torch.save``, numpy...). The file
    gets the usual permissions (``mkstemp`` alone would make it 0600).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fill(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically; see :func:`atomic_write_with`."""

    def fill(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write_with(path, fill)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text write (UTF-8); see :func:`atomic_write_with`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to memory, then :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed writer of ``path`` left behind (``.NAME.*.tmp``).

    Returns:
        The files removed.
    """
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint and result file."""
    return {
        "awp": str(awp.__version__),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- JSON and CSV
def finite_json(obj: Any) -> Any:
    """``obj`` with dataclasses as dicts, paths as text and NaN / infinities as ``None``.

    JSON has no NaN or Infinity; Python's ``json`` writes them anyway and most other readers
    then refuse the file. A number that does not exist is written as ``null``.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, numpy.generic):
        return finite_json(obj.item())
    return obj


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def json_text(obj: Any) -> str:
    """Indented JSON of ``obj`` (dataclasses as dicts, paths as text), with a final newline."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON; see :func:`json_text`."""
    return atomic_write_text(path, json_text(obj))


def read_json(path: str | os.PathLike, *, what: str = "results file") -> Any:
    """Parse a JSON file; a file that is not JSON gets an error naming it and the fix.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON (or not UTF-8 text).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, not a JSON file")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{what} {path} is not valid JSON ({err}); rerun the stage that writes it"
        ) from None


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """CSV with the union of the rows' columns (first-seen order); lists and dicts as JSON."""
    columns: dict[str, None] = {}
    for r in rows:
        for k in r:
            columns.setdefault(k, None)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue()


def _cell(v: Any) -> Any:
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return v


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Atomic CSV of dict rows (see :func:`csv_text`)."""
    return atomic_write_text(path, csv_text(rows))
