"""What every benchmark shares: the clock, the CPU thread count and synchronization
(the machine description is `eqmcli.devices.environment`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch

from eqmcli.errors import UserError

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""Clock name -> a function returning seconds."""


@contextlib.contextmanager
def timing_setup(clock: str, threads: int | None) -> Iterator[Callable[[], float]]:
    """Check the clock name, set torch's CPU threads (None keeps them), yield the clock.

    The previous thread count is restored on exit.
    """
    if clock not in CLOCKS:
        raise UserError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield CLOCKS[clock]
    finally:
        torch.set_num_threads(previous_threads)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA `device` (a no-op elsewhere): call around a timing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
