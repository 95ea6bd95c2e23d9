"""The one progress bar of the toolkit: tqdm on a terminal, a line every few percent in a log.

Every long loop (epochs, landscape points, flatness units, decoding images) takes its bar from
:func:`progress_bar`, so how progress is shown is decided here once. When stderr is not a
terminal (a log file, a CI console, ``nohup``), tqdm's carriage returns would fill the log with
one long line; there the bar prints a plain line each time another ``every`` percent is done.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


class LineProgress:
    """A progress bar for logs: ``desc: 40% (4/10) 12s`` each time another ``every`` percent
    is done (and at the end), with tqdm's interface (``update``, ``set_postfix``, ``close``,
    iteration, ``n``, context manager)."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        every: float = 10.0,
        stream: IO[str] | None = None,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.every = total, desc, every
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self._shown = -1.0  # the last percentage printed
        self._postfix = ""
        self._t0 = time.perf_counter()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "iterate a bar made over an iterable"
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        pct = 100.0 * self.n / self.total
        if pct >= 100.0 or pct - self._shown >= self.every:
            self._show(pct)

    def _show(self, pct: float) -> None:
        self._shown = pct
        extra = f" {self._postfix}" if self._postfix else ""
        seconds = time.perf_counter() - self._t0
        line = f"{self.desc}: {pct:3.0f}% ({self.n}/{self.total}) {seconds:.0f}s{extra}"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if not self._closed and self.total and self._shown < 100.0 and self.n >= self.total:
            self._show(100.0)
        self._closed = True


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    unit: str = "it",
    leave: bool = False,
) -> Any:
    """A progress bar over ``iterable`` (or one updated by hand with ``.update(n)``).

    Args:
        iterable: what to iterate (None: call ``update``).
        total: number of items (default ``len(iterable)`` when it has one).
        desc: the label.
        enabled: False gives a silent bar with the same interface.
        unit: what an item is ("img", "point"...).
        leave: keep the finished bar on the terminal.

    Returns:
        tqdm on a terminal; :class:`LineProgress` when stderr is not one (a log file).
    """
    if enabled and not sys.stderr.isatty():
        return LineProgress(iterable, total=total, desc=desc or unit)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=not enabled,
        unit=unit,
        leave=leave,
        dynamic_ncols=True,
    )
