"""Peak memory of a piece of work: the CUDA allocator's peak, or the process's peak RSS."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_MEMINFO = Path("/proc/meminfo")


@dataclass
class PeakMemory:
    """`extra_bytes`: the peak above the level at the start (None when not measurable)."""

    method: str
    extra_bytes: int | None = None


def proc_bytes(key: str, path: Path = PROC_STATUS) -> int | None:
    """A `kB` field of a /proc file (default /proc/self/status) in bytes; None where
    unavailable."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS; False where unsupported."""
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return proc_bytes("VmHWM") is not None


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Measure the peak memory above the level at entry while the `with` body runs.

    CUDA: `torch.cuda.max_memory_allocated` minus `memory_allocated` at entry (tensors
    only). CPU: the process's peak resident set size (VmHWM, reset through
    /proc/self/clear_refs) minus the resident set at entry, i.e. every byte the process
    touched, torch's allocations and anyone else's (tracemalloc would not see torch).
    Where the peak cannot be reset, `extra_bytes` stays None and `method` says so.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        found = PeakMemory("torch.cuda.max_memory_allocated minus the allocation before")
        yield found
        torch.cuda.synchronize(device)
        found.extra_bytes = torch.cuda.max_memory_allocated(device) - before
        return
    if not _reset_peak_rss():
        yield PeakMemory("unavailable (the peak RSS cannot be reset on this platform)")
        return
    before = proc_bytes("VmRSS") or 0
    found = PeakMemory("process peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS before")
    yield found
    peak = proc_bytes("VmHWM")
    found.extra_bytes = None if peak is None else max(0, peak - before)
