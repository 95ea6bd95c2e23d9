"""The one home of file writing: atomic writes, hashes, library versions, JSON and CSV tables.

Every file the toolkit writes (checkpoints, h5 surfaces, JSON/CSV results, reports, figures,
caches) goes through :func:`atomic_write_with`: the bytes go to a temp file in the same folder,
are fsync'd and renamed over the target, so a process killed at any moment leaves the previous
file (or none) and at worst a stray ``.NAME.*.tmp``, which :func:`remove_stale_temps` clears.

A command holds its outputs with :func:`exclusive_output` while it writes them: it checks first
that they can be written, takes an exclusive lock (a second writer is refused, naming the
holder), and clears the temp files a killed earlier writer left behind.

JSON written here is strict: NaN and infinities become ``null`` (JSON has no such numbers, and
other tools refuse ``NaN``), so a statistic that does not exist reads as missing.

"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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

    A ``path`` that is a symbolic link (also a dangling one) is written through: the link's
    target gets the bytes and the link stays (:func:`output_target`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    given = Path(path)
    path = output_target(given)
    tmp = _filled_temp(path, fill)
    try:
        with _naming(path):
            os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return given


def atomic_write_set(files: Mapping[str | os.PathLike, str | bytes]) -> list[Path]:
    """Write files that must agree (a table's JSON and its CSV) as a set.

    Every file goes to its temp file first (``fill`` and fsync, as :func:`atomic_write_with`);
    only when all are written are they renamed over their targets. A failure while writing (a
    full disk) leaves every old file as it was, so the set never mixes two versions. A file
    that already holds exactly these bytes is left as it is (a rerun that changes nothing
    touches nothing).

    Returns:
        The paths written, in the order given (symbolic links written through, as
        :func:`atomic_write_with` does); the unchanged ones are not among them.
    """
    temps: dict[Path, str] = {}
    try:
        for path, data in files.items():
            blob = data.encode("utf-8") if isinstance(data, str) else data
            if _holds(output_target(path), blob):
                continue
            temps[Path(path)] = _filled_temp(output_target(path), _bytes_filler(blob))
        for path, tmp in temps.items():
            target = output_target(path)
            with _naming(target):
                os.replace(tmp, target)
    except BaseException:
        for tmp in temps.values():
            _unlink_quietly(tmp)
        raise
    return list(temps)


def _holds(path: Path, blob: bytes) -> bool:
    """Whether the file at ``path`` exists and holds exactly ``blob``."""
    try:
        return path.is_file() and path.stat().st_size == len(blob) and path.read_bytes() == blob
    except OSError:
        return False


def output_target(path: str | os.PathLike) -> Path:
    """The file an output path writes: ``path`` itself, or, when it is a symbolic link, the
    file the link points to (followed link by link; the target need not exist yet), so that a
    write replaces the target, never the link.

    Raises:
        OutputNotWritable: the link is part of a loop (it can name no file).
    """
    path = Path(path)
    seen: list[Path] = []
    while path.is_symlink():
        if path in seen or len(seen) >= _MAX_LINKS:
            chain = " -> ".join(str(p) for p in [*seen, path])
            raise OutputNotWritable(
                f"cannot write {seen[0]}: it is a symbolic link in a loop ({chain}); remove "
                "the link or choose another --out"
            )
        seen.append(path)
        link = Path(os.readlink(path))
        path = link if link.is_absolute() else path.parent / link
    return path


_MAX_LINKS = 40  # as the kernel's limit on links followed in one path


def _bytes_filler(data: bytes) -> Callable[[str], None]:
    def fill(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return fill


def _filled_temp(path: Path, fill: Callable[[str], None]) -> str:
    """A temp file beside ``path`` filled by ``fill``, fsync'd, with the usual permissions."""
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    try:
        with _naming(path):
            fill(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError without a file name (``[Errno 27] File too large`` from a write) gets
    ``path``, so the one error line says which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is None or str(err.filename).endswith(".tmp"):
            raise type(err)(err.errno, err.strerror or str(err), str(path)) from err
        raise


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically; see :func:`atomic_write_with`. A file that already holds
    exactly ``data`` is left as it is (a rerun that changes nothing touches nothing)."""
    if _holds(output_target(path), data):
        return Path(path)
    return atomic_write_with(path, _bytes_filler(data))


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


def json_text(obj: Any) -> str:
    """Strict, indented JSON of ``obj`` (see :func:`finite_json`), with a final newline."""
    return json.dumps(finite_json(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic strict JSON (NaN and infinities written as ``null``)."""
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


def read_json_lines(
    path: str | os.PathLike, *, what: str = "metrics file", fix: str = "rerun the stage"
) -> list[Any]:
    """The records of a JSON-lines file (blank lines skipped); a line that is not JSON gets an
    error naming the file, the line and ``fix``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not valid JSON (a run cut while it wrote it).
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not text ({err}); {fix}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{what} {path} line {number} is not valid JSON ({err.msg}, column {err.colno}; "
                f"cut while it was written?); {fix}"
            ) from None
    return records


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """CSV with the union of the rows' columns (first-seen order); lists and dicts as JSON,
    missing numbers (None, NaN, infinities) as empty cells."""
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
        return json.dumps(finite_json(v), allow_nan=False)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return v


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Atomic CSV of dict rows (see :func:`csv_text`)."""
    return atomic_write_text(path, csv_text(rows))


# --------------------------------------------------------------------------- outputs
class OutputBusy(RuntimeError):
    """Another process is writing the same output; the message names it."""


class OutputNotWritable(OSError):
    """An output that cannot be created or written; the message names it and why."""


# Locks this process holds: lock file -> (descriptor, depth). A stage of the demo takes the lock
# of an output the demo already holds, so the same process may take one lock again.
_HELD: dict[str, list[int]] = {}


def check_writable(folder: str | os.PathLike, *, flag: str = "--out") -> None:
    """Create ``folder`` (with its parents) and write and remove a probe file in it.

    Args:
        folder: the folder an output goes into.
        flag: the option that named it, for the fix ("choose another --out").

    Raises:
        OutputNotWritable: naming the folder and the reason (read-only, a path under a regular
            file, permission, disk full...).
    """
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        target = output_target(folder)  # refuses a loop
        raise OutputNotWritable(
            f"cannot write into {folder}: it is a symbolic link to {target}, which does not "
            f"exist; create that folder (mkdir -p {target}) or choose another {flag}"
        )
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder", str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".awp-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        where = err.filename or folder
        raise OutputNotWritable(
            f"cannot write into {folder} ({where}: {reason}); choose another {flag}"
        ) from None


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return "another process"
    return (
        f"process {info.get('pid')} on {info.get('host')} since {info.get('since')}: "
        f"{info.get('command')}"
    )


@contextlib.contextmanager
def output_lock(lock_file: str | os.PathLike, *, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the body (re-entrant in one process).

    The lock is an ``fcntl.flock`` on the file, so it goes away with the process, also after a
    SIGKILL; the file records who holds it.

    Raises:
        OutputBusy: another process holds it (the message names that process and ``what``).
    """
    lock_file = Path(lock_file)
    key = str(lock_file.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise OutputBusy(
            f"{what} is being written by {holder}; wait for it to finish or choose another --out"
        ) from None
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
    info["command"] = " ".join(sys.argv)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_file_of(path: str | os.PathLike, *, folder_lock: str = "") -> Path:
    """The lock of an output: ``.NAME.lock`` beside a file, or ``FOLDER/.<folder_lock>.lock``."""
    path = Path(path)
    if folder_lock:
        return path / f".{folder_lock}.lock"
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def exclusive_output(
    path: str | os.PathLike,
    *,
    folder_lock: str = "",
    cleans: Iterable[str | os.PathLike] = (),
    enabled: bool = True,
) -> Iterator[Path]:
    """Check, lock and tidy an output before a command writes it; hold it while it writes.

    When the body fails before writing anything, the folders created for the output are
    removed again, so a refused or failed command leaves nothing behind.

    Args:
        path: the output: a file, or a folder when ``folder_lock`` names its lock (e.g. "run",
            "flatness": commands writing different files of one folder do not exclude
            each other).
        folder_lock: the name of the folder's lock ("" for a file output).
        cleans: files (and folders, recursively) whose ``.NAME.*.tmp`` left by a killed writer
            are removed once the lock is held (default: the file output itself).
        enabled: False does nothing.

    Raises:
        OutputNotWritable: the output cannot be created or written.
        OutputBusy: another process is writing it.
    """
    path = Path(path)
    if not enabled:
        yield path
        return
    target = path if folder_lock else output_target(path)  # a link's target is the output
    folder = path if folder_lock else target.parent
    created = _missing_parents(folder)
    check_writable(folder)
    lock = lock_file_of(target, folder_lock=folder_lock)
    fresh_lock = not lock.exists()
    what = f"{path}" if not folder_lock else f"{path} ({folder_lock})"
    try:
        with output_lock(lock, what=what):
            for clean in list(cleans) or ([] if folder_lock else [target]):
                clean = Path(clean)
                if clean.is_dir():
                    for tmp in clean.rglob(".*.tmp"):
                        tmp.unlink(missing_ok=True)
                else:
                    remove_stale_temps(output_target(clean))
            yield path
    except BaseException:
        _remove_if_untouched(created, lock if fresh_lock else None)
        raise


def _missing_parents(folder: Path) -> list[Path]:
    """The folders of ``folder``'s chain that do not exist yet, deepest first."""
    missing = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_if_untouched(created: list[Path], lock: Path | None) -> None:
    """Remove folders this command created when nothing but its own lock file is in them."""
    if lock is not None and lock.parent in created:
        with contextlib.suppress(OSError):
            lock.unlink()
    for folder in created:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
