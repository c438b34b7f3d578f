"""Forward+backward time of every loss head relative to plain NormFace.

All heads see the same embeddings and labels; repeats are interleaved (every round times
each head once, in a rotated order) so drifting machine load affects all heads alike, and
each head's time is the median over rounds. Times are milliseconds per fwd+bwd step,
of wall-clock time (`clock="wall"`) or of this process's CPU time (`clock="cpu"`, which a
busy shared machine disturbs far less; pair it with `threads=1` for an honest count).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from eqmcli.bench.timing import synchronize, timing_setup
from eqmcli.devices import resolve_device
from eqmcli.errors import UserError
from eqmcli.losses import LOSS_NAMES, build_head, canonical_name

BASELINE = "normface"


@dataclass(frozen=True)
class HeadTiming:
    """One row of the table: head name, median ms per fwd+bwd, ratio to NormFace."""

    name: str
    ms: float
    ratio: float
    samples: int

    def to_dict(self) -> dict[str, float | str | int]:
        return asdict(self)


def _step(head: torch.nn.Module, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    """One forward + backward w.r.t. the embeddings and the class weights (no accumulation)."""
    loss = head(embeddings, labels)
    torch.autograd.grad(loss, [embeddings, head.weight])


def benchmark_heads(
    names: Sequence[str] | None = None,
    *,
    num_classes: int = 10575,
    embedding_dim: int = 512,
    batch_size: int = 256,
    device: str = "cpu",
    repeats: int = 10,
    warmup: int = 1,
    seed: int = 0,
    threads: int | None = None,
    clock: str = "wall",
) -> list[HeadTiming]:
    """Time fwd+bwd of each head (default: all) and NormFace in the same run.

    `threads` sets torch's intra-op CPU threads for the run (None keeps the current
    setting). Returns one `HeadTiming` per head, in the order given (NormFace added first
    when missing); `ratio` = head ms / NormFace ms.
    """
    with timing_setup(clock, threads) as timer:
        return _run(
            names, num_classes, embedding_dim, batch_size, device, repeats, warmup, seed, timer
        )


def _run(
    names: Sequence[str] | None,
    num_classes: int,
    embedding_dim: int,
    batch_size: int,
    device: str,
    repeats: int,
    warmup: int,
    seed: int,
    now: Callable[[], float],
) -> list[HeadTiming]:
    """The timing loop of `benchmark_heads` (arguments as there)."""
    if repeats < 1:
        raise UserError(f"repeats must be >= 1, got {repeats}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    chosen = list(dict.fromkeys(names or [n for n in LOSS_NAMES if n != "am"]))
    for name in chosen:
        canonical_name(name)  # UserError for an unknown name
    if BASELINE not in chosen:
        chosen.insert(0, BASELINE)
    target = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch_size, embedding_dim, generator=generator).to(target)
    embeddings.requires_grad_(True)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(target)
    torch.manual_seed(seed)
    heads = {name: build_head(name, num_classes, embedding_dim).to(target) for name in chosen}

    def timed(name: str) -> float:
        synchronize(target)
        start = now()
        _step(heads[name], embeddings, labels)
        synchronize(target)
        return (now() - start) * 1000.0

    for _ in range(warmup):
        for name in chosen:
            timed(name)
    samples: dict[str, list[float]] = {name: [] for name in chosen}
    for round_index in range(repeats):
        shift = round_index % len(chosen)
        for name in chosen[shift:] + chosen[:shift]:
            samples[name].append(timed(name))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians[BASELINE]
    return [
        HeadTiming(name=name, ms=medians[name], ratio=medians[name] / base, samples=repeats)
        for name in chosen
    ]
