"""What every benchmark shares: the clock, the CPU thread count, the machine description."""

from __future__ import annotations

import contextlib
import os
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


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


def machine() -> dict[str, Any]:
    """The host a measurement ran on: CPU model, the ISA flags that decide torch's kernels
    (AVX2/AVX-512/BF16/AMX on x86, ASIMD/SVE on ARM), logical CPUs, memory (GiB) and the
    1-minute load average at the time (a loaded host slows every figure)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())  # the first CPU's values
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    memory = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu_model": model,
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "logical_cpus": os.cpu_count(),
        "memory_gib": memory,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def describe_machine(found: dict[str, Any]) -> str:
    """One line for the console: "AMD EPYC, 2 CPUs (avx2, avx512_bf16), 23.4 GiB, load 1.6"."""
    flags = f" ({', '.join(found['cpu_flags'])})" if found["cpu_flags"] else ""
    memory = f", {found['memory_gib']} GiB" if found["memory_gib"] is not None else ""
    load = (f", load {found['load_average_1min']}"
            if found["load_average_1min"] is not None else "")
    return f"{found['cpu_model']}, {found['logical_cpus']} CPUs{flags}{memory}{load}"


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, torch version, CPU threads and the host (`machine()`): what makes runs
    comparable."""
    host = machine()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else host["cpu_model"]
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": host,
    }
