"""Device and precision choices (`--device auto|cpu|cuda|cuda:N`, autocast dtype, speed
settings) and the description of the machine a measurement or run used (`environment`)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections.abc import Iterator
from typing import Any

import torch

from eqmcli.errors import UserError

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def validate_device_string(text: str) -> str:
    """Check the spelling of a device option (availability is checked at resolve time)."""
    if not _DEVICE_PATTERN.match(text):
        raise UserError(f"device {text!r} is not one of auto, cpu, cuda, cuda:N")
    return text


def resolve_device(text: str = "auto") -> torch.device:
    """`auto` -> the current CUDA device when present, else the CPU."""
    validate_device_string(text)
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {text!r} was asked for but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device {text!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) present"
            )
    return device


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware: x86 AVX512-BF16 or AMX tiles.

    Asked of torch's own CPU probes (`torch.cpu._is_avx512_bf16_supported`,
    `_is_amx_tile_supported`); other CPUs (and torch builds without the probes) say False.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def gpu_has_native_bf16() -> bool:
    """True when the current CUDA GPU computes bf16 in hardware (not emulated)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def autocast_dtype(
    precision: str, device: torch.device, *, training: bool = False
) -> torch.dtype | None:
    """The autocast dtype for a precision option (None = plain float32).

    `auto` on CUDA is bf16 where the GPU computes bf16 natively (Ampere and later:
    `gpu_has_native_bf16`) and fp16 elsewhere (V100, T4: emulated bf16 is slow). On the
    CPU, `auto` trains (`training=True`) in bf16 when the CPU has native bf16
    (`cpu_has_native_bf16`: the quickstart reaches the same accuracy, docs/performance.md)
    and in float32 elsewhere; embeddings (evaluation, analysis, `eqm embed`) stay float32
    on every CPU, so they are exact and comparable across tools.
    `fp16` is only meaningful on CUDA.
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if gpu_has_native_bf16() else torch.float16
        native = training and device.type == "cpu" and cpu_has_native_bf16()
        return torch.bfloat16 if native else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("precision 'fp16' needs a CUDA device; use fp32 or bf16 on the CPU")
        return torch.float16
    raise UserError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to `dtype` on `device`, or a no-op when dtype is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def full_float32_matmul(device: torch.device) -> Iterator[None]:
    """Matrix products in full float32 inside: autocast off on `device` and no TF32/bf16
    shortcut for float32 inputs (`torch.set_float32_matmul_precision("highest")`,
    restored after). For the products whose results are compared with fine thresholds:
    the head's cosines, the margin search."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        if torch.amp.is_autocast_available(device.type):
            with torch.autocast(device_type=device.type, enabled=False):
                yield
        else:  # e.g. the meta device: nothing to turn off
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


def set_training_speed(device: torch.device) -> dict[str, bool]:
    """Turn on the CUDA speed settings for training and return the ones in force.

    On CUDA: cuDNN autotuning (`cudnn.benchmark`: a training run has fixed shapes) and
    TF32 for float32 matmuls and convolutions (they matter in `precision: fp32`; the
    head's cosines and the margin search stay full float32, `full_float32_matmul`). On
    other devices nothing changes. The returned flags go into the run's environment
    record (metrics.jsonl) and `eqm bench train`'s environment.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return {
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
    }


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
