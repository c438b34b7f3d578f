"""Cost of the classification head alone for large class counts C: time and peak memory.

For each C, a fresh head (`build_head(name, C, d)`) runs forward + backward on random
embeddings (B, d) with requires_grad (the gradient flows to the embeddings and to the
class weights W (C, d), as in training; W's gradient is freed before each step, as
`zero_grad(set_to_none=True)` does). Time is the median wall-clock milliseconds per step
(CUDA synchronized). Memory, in bytes:

- ``weight_bytes``, ``grad_bytes``: W and its gradient (C x d float32 each);
- ``saved_bytes``: tensors autograd keeps from the forward for the backward (unique
  storages, counted with saved-tensor hooks: cosines, logits, normalized W, ...);
- ``peak_bytes``: the peak above the level before the head was built, through its warm-up
  and timed steps (`eqmcli.bench.memory.peak_memory`, i.e. the head's weight plus the
  step's peak): on CUDA ``torch.cuda.max_memory_allocated``, on the CPU the process's
  peak resident set size (``VmHWM`` of /proc/self/status, reset through
  /proc/self/clear_refs) -- the same quantity measured by the OS. Where the peak cannot
  be reset, ``peak_bytes`` is None and ``peak_method`` says so.

A size whose estimated need exceeds the memory available (CUDA: free device memory;
CPU: half of MemAvailable, the machine being shared) is skipped with a note instead of
running out of memory.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from eqmcli.bench.memory import PROC_MEMINFO, peak_memory, proc_bytes
from eqmcli.bench.timing import synchronize
from eqmcli.devices import environment, resolve_device
from eqmcli.errors import UserError
from eqmcli.losses import build_head, canonical_name

DEFAULT_CLASSES: tuple[int, ...] = (10575, 85742, 1_000_000)
"""CASIA-WebFace, MS1M(-ArcFace), and a million identities."""
CPU_MEMORY_FRACTION = 0.5
"""Fraction of the CPU's MemAvailable a size may use (the machine is shared)."""
_BC_COPIES, _CD_COPIES = 8, 4
"""Estimated live float32 (B, C) and (C, d) tensors at the step's peak (see `estimate_bytes`)."""


@dataclass
class HeadCostRow:
    """One class count: ms per fwd+bwd and bytes (see the module docstring)."""

    classes: int
    ms: float | None = None
    weight_bytes: int | None = None
    grad_bytes: int | None = None
    saved_bytes: int | None = None
    peak_bytes: int | None = None
    estimated_bytes: int = 0
    samples: int = 0
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HeadCostResult:
    """Settings, environment, one row per C, and notes (skips, how memory was measured)."""

    settings: dict[str, Any]
    environment: dict[str, Any]
    peak_method: str
    rows: list[HeadCostRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "head-cost",
            "settings": self.settings,
            "environment": self.environment,
            "peak_method": self.peak_method,
            "rows": [row.to_dict() for row in self.rows],
            "notes": self.notes,
            "seconds": self.seconds,
        }


def estimate_bytes(classes: int, dim: int, batch: int) -> int:
    """Rough peak bytes of one fwd+bwd: W, its gradient, normalized W and its gradient
    (4 x C x d), plus cosines, logits, softmax, masks and their gradients (~8 x B x C),
    float32."""
    return 4 * (_CD_COPIES * classes * dim + _BC_COPIES * batch * classes)


def available_bytes(device: torch.device) -> int:
    """Bytes a head may use: free CUDA memory, or a fraction of the CPU's MemAvailable."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
    available = proc_bytes("MemAvailable", PROC_MEMINFO)
    if available is not None:
        return int(available * CPU_MEMORY_FRACTION)
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages * CPU_MEMORY_FRACTION)


def benchmark_head_cost(
    classes: list[int] | tuple[int, ...] = DEFAULT_CLASSES,
    *,
    head: str = "eqm",
    dim: int = 512,
    batch: int = 256,
    device: str = "auto",
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
) -> HeadCostResult:
    """Time and memory of `head`'s fwd+bwd for each class count (see the module docstring)."""
    started = time.perf_counter()
    canonical_name(head)
    for name, value, minimum in (("dim", dim, 1), ("batch", batch, 1), ("repeats", repeats, 1),
                                 ("warmup", warmup, 0)):
        if value < minimum:
            raise UserError(f"--{name} must be >= {minimum}, got {value}")
    if not classes or min(classes) < 2:
        raise UserError(f"--classes must all be >= 2, got {list(classes)}")
    target = resolve_device(device)
    result = HeadCostResult(
        settings={"classes": list(classes), "head": head, "dim": dim, "batch": batch,
                  "repeats": repeats, "warmup": warmup},
        environment=environment(target),
        peak_method="not measured (every size was skipped)",
    )
    generator = torch.Generator().manual_seed(seed)
    for num_classes in classes:
        row = HeadCostRow(num_classes, estimated_bytes=estimate_bytes(num_classes, dim, batch))
        result.rows.append(row)
        room = available_bytes(target)
        if row.estimated_bytes > room:
            row.skipped = (
                f"needs ~{row.estimated_bytes / 2**30:.1f} GiB, "
                f"{room / 2**30:.1f} GiB available"
            )
            result.notes.append(f"C={num_classes:,} skipped: {row.skipped}")
            continue
        result.peak_method = _measure(
            row, head, num_classes, dim, batch, target, repeats, warmup, generator
        )
        gc.collect()  # the head is gone with _measure's frame: give its memory back
        if target.type == "cuda":
            torch.cuda.empty_cache()
    result.seconds = time.perf_counter() - started
    return result


def _measure(
    row: HeadCostRow,
    head_name: str,
    num_classes: int,
    dim: int,
    batch: int,
    device: torch.device,
    repeats: int,
    warmup: int,
    generator: torch.Generator,
) -> str:
    """Fill `row` with the time and memory of one class count; returns how the peak was
    measured (`eqmcli.bench.memory.peak_memory`, from before the head is built)."""
    embeddings = torch.randn(batch, dim, generator=generator).to(device).requires_grad_(True)
    labels = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    saved: dict[int, int] = {}
    with peak_memory(device) as peak:
        head = build_head(head_name, num_classes, dim).to(device)
        row.weight_bytes = head.weight.numel() * head.weight.element_size()
        try:
            for _ in range(warmup):
                _step_ms(head, embeddings, labels, device)
            times = [
                _step_ms(head, embeddings, labels, device, saved if i == 0 else None)
                for i in range(repeats)
            ]
        except torch.OutOfMemoryError as exc:
            row.skipped = f"out of memory: {str(exc).splitlines()[0][:160]}"
            return peak.method
        finally:
            grad = head.weight.grad
            row.grad_bytes = grad.numel() * grad.element_size() if grad is not None else None
    row.peak_bytes = peak.extra_bytes
    row.saved_bytes = sum(saved.values())
    row.ms = statistics.median(times)
    row.samples = len(times)
    return peak.method


def _step_ms(
    head: nn.Module,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    saved: dict[int, int] | None = None,
) -> float:
    """Milliseconds of one fwd+bwd, W's gradient freed first (as `zero_grad(set_to_none=True)`);
    with `saved`, the bytes of each storage autograd keeps for the backward, by address."""

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()  # type: ignore[index]
        return tensor

    head.weight.grad = None
    embeddings.grad = None
    synchronize(device)
    start = time.perf_counter()
    if saved is None:
        loss = head(embeddings, labels)
    else:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = head(embeddings, labels)
    loss.backward()
    synchronize(device)
    return (time.perf_counter() - start) * 1000.0
