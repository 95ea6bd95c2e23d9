"""The one progress bar of the toolkit: tqdm on a terminal.

Every long loop (epochs, landscape points, flatness units, decoding images) takes its bar from
:func:`progress_bar`, so how progress is shown is decided here once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


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
    """
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=not enabled,
        unit=unit,
        leave=leave,
        dynamic_ncols=True,
    )
