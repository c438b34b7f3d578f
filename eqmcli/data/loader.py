"""The input pipeline: a DataLoader of uint8 batches (decoding in worker processes).

Items are ``(uint8 (3,H,W), int)``; batches are ``(uint8 (B,3,H,W), int64 (B,))``. Only
uint8 crosses the process boundary (4x less than float32); flipping and normalization to
float happen on the training device (``eqmcli.data.transforms.to_model_input``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

MAX_DEFAULT_WORKERS = 8


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask / cgroup-aware where the OS says so)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return max(os.cpu_count() or 1, 1)


def default_num_workers(cpus: int | None = None) -> int:
    """Default DataLoader workers: ``min(8, cpus - 1)``, at least 1 when there are 2+ CPUs.

    One CPU is left to the training process (which runs the model on CPU, or feeds the GPU);
    the rest decode JPEGs. A 112x112 JPEG decodes in ~0.2 ms, so 8 workers feed well over
    10k images/s, more than one GPU trains on; beyond that workers only cost memory. With a
    single CPU, decoding stays in the main process (0 workers).
    """
    cpus = available_cpus() if cpus is None else cpus
    return max(0, min(MAX_DEFAULT_WORKERS, cpus - 1))


def collate_uint8(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items into (uint8 (B,3,H,W), int64 (B,)); the images stay uint8.

    The copy is done by numpy into the output tensor (``torch.stack`` dispatches small copies
    to the intra-op thread pool, ~100x slower on a busy CPU); inside a worker the output is
    allocated in shared memory, so sending it to the main process costs no extra copy.
    """
    first = batch[0][0]
    images = torch.empty((len(batch), *first.shape), dtype=first.dtype)
    if get_worker_info() is not None:
        images.share_memory_()
    np.stack([item[0].numpy() for item in batch], out=images.numpy())
    labels = torch.tensor([int(item[1]) for item in batch], dtype=torch.int64)
    return images, labels


def ignore_stop_signals(worker_id: int) -> None:
    """Worker init: Ctrl-C / SIGTERM sent to the whole process group (a terminal, Slurm) are
    left to the main process, which checkpoints at the next step and then ends the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    sampler: Sampler[int] | None = None,
    shuffle: bool = False,
    num_workers: int | None = None,
    pin_memory: bool = False,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A DataLoader yielding (uint8 (B,3,H,W), int64 (B,)).

    ``num_workers=None`` takes `default_num_workers()`. With workers, they are persistent
    (no re-fork per epoch, datasets keep their per-process file handles) and prefetch 4
    batches each. ``shuffle`` is ignored when a ``sampler`` is given (the sampler decides);
    ``generator`` seeds shuffling and the workers' base seeds.
    """
    workers = default_num_workers() if num_workers is None else int(num_workers)
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {workers}")
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {
            "persistent_workers": True, "prefetch_factor": 4,
            "worker_init_fn": ignore_stop_signals,
        }
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=workers,
        collate_fn=collate_uint8,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        **extra,
    )
