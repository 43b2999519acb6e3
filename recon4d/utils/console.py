"""Console output for long steps: rich progress bars on a terminal, quiet lines elsewhere.

Global switches set once by the CLI: ``--quiet`` silences progress and info lines. Bars are
never drawn when stderr is not a TTY or when ``CI`` is set, so logs stay readable.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_state = {"quiet": False, "debug": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = bool(quiet)


def set_debug(debug: bool) -> None:
    _state["debug"] = bool(debug)


def is_quiet() -> bool:
    return _state["quiet"]


def is_debug() -> bool:
    return _state["debug"]


def bars_enabled() -> bool:
    """True when an animated progress bar is appropriate (interactive, not quiet, not CI)."""
    if _state["quiet"] or os.environ.get("CI"):
        return False
    return sys.stderr.isatty()


def info(message: str) -> None:
    """A status line on stderr unless ``--quiet``."""
    if not _state["quiet"]:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning line on stderr; shown even with ``--quiet``."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def track(iterable: Iterable[T], total: int | None = None, description: str = "working",
          every: int = 0) -> Iterator[T]:
    """Iterate with progress: a rich bar on a terminal, else a line every ``every`` items.

    ``every=0`` picks about ten lines over the run in non-interactive mode.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if bars_enabled():
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(description, total=total)
            for item in iterable:
                yield item
                progress.advance(task)
        return
    step = every or (max(1, (total or 10) // 10))
    start = time.monotonic()
    for index, item in enumerate(iterable, start=1):
        yield item
        if not _state["quiet"] and (index % step == 0 or index == total):
            of = f"/{total}" if total else ""
            elapsed = time.monotonic() - start
            left = ""
            if total and index < total:
                left = f", about {format_duration(elapsed / index * (total - index))} left"
            print(f"{description}: {index}{of} ({elapsed:.1f}s{left})", file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    """A rough human duration for progress lines: ``"40s"``, ``"3 min"``, ``"1 h 05 min"``.

    Used for the remaining-time estimate of line-mode progress (logs, CI, batch jobs), which
    extrapolates the mean time per item so far; it is a guide, not a promise (a fit's later
    steps are slower than its coarse ones).
    """
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
