"""`eqm bench analysis`: time and peak memory of the per-class margin search.

The search is `eqmcli.analysis.nearest.nearest_centers_cosine` (each class's nearest other class
centre), run on random Gaussian centres (seeded) of the size of a real head: MS1M-RetinaFace
has C = 85,742 identities, embeddings d = 512. With `check`, the plain float64 search
(`exact_nearest`, O(C^2 d) in float64) runs too, and the result says for how many classes
the two disagree (0 is required) and how much slower the plain search is.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from eqmcli.analysis.nearest import DEFAULT_BLOCK, exact_nearest, nearest_centers_cosine
from eqmcli.bench.memory import peak_memory
from eqmcli.devices import resolve_device
from eqmcli.errors import UserError

MS1M_CLASSES = 85742


@dataclass
class NearestCentersBench:
    """One timed search. Seconds are wall clock; `cpu_seconds` sums all threads."""

    classes: int
    dim: int
    device: str
    block: int
    threads: int
    seconds: float
    cpu_seconds: float
    peak_extra_bytes: int | None
    peak_method: str
    exact_seconds: float | None = None
    exact_cpu_seconds: float | None = None
    mismatches: int | None = None

    def to_dict(self) -> dict:
        return {"benchmark": "analysis", **asdict(self)}


def random_centers(classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(classes, dim) float32 standard-normal class centres, reproducible from `seed`."""
    return torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed))


def benchmark_nearest_centers(
    classes: int = MS1M_CLASSES,
    dim: int = 512,
    *,
    device: str = "cpu",
    block: int | None = None,
    check: bool = False,
    seed: int = 0,
) -> NearestCentersBench:
    """Time `nearest_centers_cosine` once (and, with `check`, the float64 reference)."""
    if classes < 2 or dim < 1:
        raise UserError(f"--classes must be >= 2 and --dim >= 1, got {classes} and {dim}")
    if block is not None and block < 1:
        raise UserError(f"--block must be >= 1, got {block}")
    target = resolve_device(device)
    centers = random_centers(classes, dim, seed)
    with peak_memory(target) as memory:
        wall, cpu = time.perf_counter(), time.process_time()
        _, nearest = nearest_centers_cosine(centers, block, device=target)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    result = NearestCentersBench(
        classes=classes,
        dim=dim,
        device=str(target),
        block=block or DEFAULT_BLOCK.get(target.type, DEFAULT_BLOCK["cpu"]),
        threads=torch.get_num_threads(),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        peak_extra_bytes=memory.extra_bytes,
        peak_method=memory.method,
    )
    if check:
        wall, cpu = time.perf_counter(), time.process_time()
        _, reference = exact_nearest(centers)
        result.exact_seconds = time.perf_counter() - wall
        result.exact_cpu_seconds = time.process_time() - cpu
        result.mismatches = int(np.count_nonzero(nearest != reference))
    return result
