"""What every benchmark shares: the clock, the CPU thread count, the machine description."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator
from typing import Any

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


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, torch version, CPU threads: what makes runs comparable."""
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    if device.type == "cpu":
        try:
            for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
