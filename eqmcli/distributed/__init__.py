"""Multi-process training on `torch.distributed`: torchrun detection, DDP, the sharded head.

`init_distributed` reads the torchrun environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`), joins the process group (NCCL on CUDA, Gloo on CPU) and
returns a `DistributedContext`; without that environment it returns the single-process
context, whose every method is a no-op, so the trainer runs unchanged.

`train.distributed` picks the head: `ddp` replicates it (DDP over backbone and head), and
`sharded` splits it by class over the ranks (`ShardedHead`, whose reduction is
`ClassSharded`; optional Partial FC through `train.sample_rate`). What differs between the
two lives in the head's reduction (`eqmcli.losses.reduction`): checkpoints always hold the
full head and its full optimizer state (gathered on save, re-sharded on load), so a run
saved on N ranks resumes on M ranks or in one process. See docs/distributed.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from eqmcli.devices import resolve_device
from eqmcli.distributed.sharded_head import (
    ClassSharded,
    ShardedHead,
    all_gather_rows,
    shard_bounds,
    sharded_target_log_prob,
)
from eqmcli.errors import UserError

T = TypeVar("T")

def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are set (RANK, WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _sum_allreduce_hook(state, bucket):  # type: ignore[no-untyped-def]
    """DDP communication hook (state: None, bucket: `dist.GradBucket`) -> Future[Tensor].

    Sums the bucket's gradients over the ranks instead of averaging them. Unannotated on
    purpose: DDP checks the annotations, and postponed (string) ones fail its check.
    """
    future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return future.then(lambda done: done.value()[0])


@dataclass
class DistributedContext:
    """Where this process sits in the job. `active` is False for a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False
    owns_group: bool = False
    mode: str = "ddp"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files, logs, progress and evaluates."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """True when the head is class-sharded (`train.distributed: sharded`)."""
        return self.mode == "sharded"

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.active:
            dist.barrier()

    def any(self, flag: bool | Tensor) -> bool:
        """True when `flag` is true on any rank (a collective when distributed)."""
        if not self.active:
            return bool(flag)
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        value = torch.tensor(float(bool(flag)), device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (a picklable object)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 only; a `UserError` it raises is raised on every rank.

        Returns `fn()` on rank 0 and None elsewhere. Keeps the other ranks from waiting
        forever on a rank 0 that stopped on a user mistake.
        """
        result: T | None = None
        message: str | None = None
        if self.is_main:
            try:
                result = fn()
            except UserError as error:
                message = str(error)
        message = self.broadcast(message)
        if message is not None:
            raise UserError(message)
        return result

    def close(self, *, wait_for_others: bool = True) -> None:
        """Leave the process group if this context created it.

        `wait_for_others` (a finished run) waits at a barrier first. A rank leaving on an
        error must not: the other ranks sit in another collective, so a barrier would hang
        until the timeout and bury this rank's message under "connection closed" errors;
        it leaves at once and torchrun stops the others.
        """
        if self.owns_group and dist.is_initialized():
            if wait_for_others:
                dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False

    # ----------------------------------------------------------------------- models
    def wrap_backbone(self, backbone: nn.Module, device: torch.device) -> nn.Module:
        """DDP around the backbone when distributed (summed gradients in sharded mode)."""
        if not self.active:
            return backbone
        ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(backbone, device_ids=ids)
        if self.sharded:
            # each rank's backbone gradient is already the exact partial gradient of the
            # global loss through its own samples: sum, do not average
            wrapped.register_comm_hook(None, _sum_allreduce_hook)
        return wrapped

    def wrap_head(self, head: nn.Module, device: torch.device) -> nn.Module:
        """DDP around a replicated head (ddp mode); a class-sharded head is returned as is."""
        if not self.active or not head.reduction.replicated:
            return head
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(head, device_ids=ids)


def rank_gpu(device_text: str, local_rank: int, world_size: int) -> torch.device:
    """The GPU of the rank `local_rank` of this machine: `cuda:LOCAL_RANK`.

    `UserError` when a fixed `cuda:N` would put several ranks on one GPU (NCCL refuses
    that) or when this machine has fewer GPUs than its ranks.
    """
    if device_text.startswith("cuda:") and world_size > 1:
        raise UserError(
            f"train.device {device_text!r} would put all {world_size} torchrun ranks on one "
            "GPU; use train.device=cuda (or auto): each rank then takes cuda:LOCAL_RANK"
        )
    if device_text.startswith("cuda:"):
        return torch.device(device_text)
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(
            f"torchrun started local rank {local_rank} but this machine has {count} CUDA "
            f"GPU(s); start at most {count} process(es) per node (--nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


def init_distributed(
    device_text: str, mode: str = "ddp", *, timeout_s: float = 1800.0
) -> tuple[DistributedContext, torch.device]:
    """The context and device of this process; joins the process group under torchrun.

    Under torchrun the backend is NCCL when the device resolves to CUDA (the device
    becomes `cuda:LOCAL_RANK`) and Gloo otherwise. A group that already exists is reused.
    `timeout_s` (seconds, `train.process_group_timeout_s`) bounds every wait in a collective.
    """
    device = resolve_device(device_text)
    if not launched_by_torchrun():
        return DistributedContext(mode=mode), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = rank_gpu(device_text, local_rank, world)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
        owns = True
    context = DistributedContext(
        rank=rank, world_size=world, local_rank=local_rank, active=True, owns_group=owns,
        mode=mode,
    )
    return context, device


__all__ = [
    "ClassSharded",
    "DistributedContext",
    "ShardedHead",
    "all_gather_rows",
    "init_distributed",
    "launched_by_torchrun",
    "shard_bounds",
    "sharded_target_log_prob",
]
