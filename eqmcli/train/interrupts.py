"""Ctrl-C and SIGTERM end a run cleanly: the loop checkpoints at the next step boundary.

SIGTERM is what Slurm, Kubernetes and `kill` send before killing a job, so it is treated
exactly like Ctrl-C (SIGINT). A second Ctrl-C stops the process at once. A repeated SIGTERM
only repeats the request: a job's processes often receive it twice (Slurm signals the whole
job, and torchrun forwards the same SIGTERM to its workers), and a scheduler that wants a
process gone follows SIGTERM with SIGKILL after its grace period anyway.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """Set by the first stop signal; the training loop polls it between steps."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        """`"SIGINT"` or `"SIGTERM"` once requested."""
        return None if self.signum is None else signal.Signals(self.signum).name


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the handlers for `STOP_SIGNALS` (main thread only) and restore them after."""
    request = StopRequest()
    previous: dict[int, Any] = {}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        previous.clear()

    def handler(signum: int, frame: Any) -> None:
        if request.requested and signum == signal.SIGINT:  # Ctrl-C again: stop at once
            restore()
            signal.raise_signal(signum)
            return
        if not request.requested:
            request.signum = signum

    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread: leave the signals alone
        restore()
    try:
        yield request
    finally:
        restore()
