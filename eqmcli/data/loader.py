"""The input pipeline: a DataLoader of uint8 batches (decoding in worker processes).

Items are ``(uint8 (3,H,W), int)``; batches are ``(uint8 (B,3,H,W), int64 (B,))``. Only
uint8 crosses the process boundary (4x less than float32); flipping and normalization to
float happen on the training device (``eqmcli.data.transforms.to_model_input``).

A `UserError` raised while a worker builds a batch (every image of a class unreadable, a
corrupt image in strict mode) travels to the main process as a `LoaderFailure` batch and
is raised there as the same one-sentence `UserError`; PyTorch's own route would wrap it in
the worker's traceback text.
"""

from __future__ import annotations

import atexit
import os
import signal
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from eqmcli.errors import UserError

MAX_DEFAULT_WORKERS = 8


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask / cgroup-aware where the OS says so)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return max(os.cpu_count() or 1, 1)


def ranks_on_this_machine() -> int:
    """Training processes sharing this machine: torchrun's `LOCAL_WORLD_SIZE`, else 1."""
    return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)


def default_num_workers(cpus: int | None = None, ranks: int | None = None) -> int:
    """Default DataLoader workers per rank: ``min(8, cpus // ranks - 1)``, at least 0.

    The machine's CPUs are shared by its `ranks` training processes (default
    `ranks_on_this_machine()`: 8 ranks on 16 CPUs get 1 worker each, not 8). Of each
    rank's share, one CPU is left to the training process (which runs the model on CPU, or
    feeds the GPU); the rest decode JPEGs. A 112x112 JPEG decodes in ~0.2 ms, so 8 workers
    feed well over 10k images/s, more than one GPU trains on; beyond that workers only
    cost memory. With a single CPU per rank, decoding stays in the main process (0 workers).
    """
    cpus = available_cpus() if cpus is None else cpus
    ranks = ranks_on_this_machine() if ranks is None else ranks
    return max(0, min(MAX_DEFAULT_WORKERS, cpus // max(ranks, 1) - 1))


@dataclass(frozen=True)
class LoaderFailure:
    """The message of a `UserError` raised while loading an item, carried as data."""

    message: str


class _ReportingDataset(Dataset):
    """``dataset`` whose `UserError`s become `LoaderFailure` items (see the module doc)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except UserError as exc:
            return LoaderFailure(str(exc))

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A batch through the dataset's own `__getitems__` where it has one (the synthetic
        set renders a batch in vectorized passes, ~10x faster than item by item)."""
        fetch_batch = getattr(self.dataset, "__getitems__", None)
        if fetch_batch is None:
            return [self[index] for index in indices]
        try:
            return fetch_batch(indices)
        except UserError as exc:
            return [LoaderFailure(str(exc))]


class FaceLoader(DataLoader):
    """A DataLoader that raises a worker's `UserError` in the main process as one sentence,
    after ending its workers (a failed loader is not used again)."""

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            if isinstance(batch, LoaderFailure):
                self.close()
                raise UserError(batch.message)
            yield batch

    def close(self) -> None:
        """End the worker processes now (persistent workers otherwise live with the loader)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)  # what its __del__ calls
        if shutdown is not None:
            shutdown()


# Workers leave Ctrl-C and SIGTERM to the trainer (`ignore_stop_signals`), so the
# multiprocessing exit handler, which terminates them with SIGTERM and then waits, would
# wait forever for workers of a loader still alive at exit (e.g. held by the traceback of
# the error that ends the program). This handler, registered after that one, runs first
# and ends them the ordinary way.
_LIVE_LOADERS: weakref.WeakSet[FaceLoader] = weakref.WeakSet()


@atexit.register
def _close_live_loaders() -> None:
    for loader in list(_LIVE_LOADERS):
        loader.close()


def collate_uint8(
    batch: Sequence[tuple[torch.Tensor, int] | LoaderFailure],
) -> tuple[torch.Tensor, torch.Tensor] | LoaderFailure:
    """Stack items into (uint8 (B,3,H,W), int64 (B,)); the images stay uint8. A batch with a
    `LoaderFailure` item is that failure.

    The copy is done by numpy into the output tensor (``torch.stack`` dispatches small copies
    to the intra-op thread pool, ~100x slower on a busy CPU); inside a worker the output is
    allocated in shared memory, so sending it to the main process costs no extra copy.
    """
    failure = next((item for item in batch if isinstance(item, LoaderFailure)), None)
    if failure is not None:
        return failure
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
    """A `FaceLoader` yielding (uint8 (B,3,H,W), int64 (B,)); a `UserError` of the dataset
    reaches the caller as the same sentence, from worker processes too.

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
    loader = FaceLoader(
        _ReportingDataset(dataset),
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
    _LIVE_LOADERS.add(loader)
    return loader
