"""Stopping a fit cleanly: Ctrl+C or SIGTERM ends the current step, saves a checkpoint, then stops.

Without this, Ctrl+C raised KeyboardInterrupt wherever the interpreter was (often inside a
step), and SIGTERM (``kill``, a batch timeout, a preempted cloud machine) ended the process at
once: either way the steps since the last periodic checkpoint were lost. A second signal stops
at once, for a step that will not finish.
"""

from __future__ import annotations

import signal
import threading

from recon4d.utils import console

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """Context manager that turns SIGINT/SIGTERM into a request checked between steps.

    ``signum`` is the first signal received (None: none). Handlers are installed only in the
    main thread (Python delivers signals there); elsewhere the defaults stay.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # asked twice: stop now, mid-step
            from recon4d.errors import Interrupted

            # The exit status names the signal (143 for SIGTERM), as for the first one.
            raise Interrupted("stopped at once, mid-step", exit_code=128 + signum)
        self.signum = signum
        console.warn(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                     "(a second Ctrl+C or SIGTERM stops at once)")
