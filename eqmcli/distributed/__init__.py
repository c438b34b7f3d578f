"""Multi-process training on `torch.distributed`: torchrun detection, DDP, the sharded head.

`init_distributed` reads the torchrun environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`), joins the process group (NCCL on CUDA, Gloo on CPU) and
returns a `DistributedContext`; without that environment it returns the single-process
context, whose every method is a no-op, so `eqmcli.train` runs unchanged.

`train.distributed` picks the head: `ddp` replicates it (DDP over backbone and head), and
`sharded` splits it by class over the ranks (`ShardedHead`, optional Partial FC through
`train.sample_rate`). Checkpoints always hold the full head and its full optimizer state
(gathered on save, re-sharded on load), so a run saved on N ranks resumes on M ranks or
in one process. See docs/distributed.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from eqmcli.distributed.sharded_head import (
    ShardedHead,
    all_gather_rows,
    shard_bounds,
    sharded_target_log_prob,
)
from eqmcli.errors import UserError

T = TypeVar("T")

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are set (RANK, WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


class NullMetrics:
    """A metrics log that writes nothing (ranks other than 0)."""

    def write(self, record: dict[str, Any]) -> None:
        """Drop `record`."""


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

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
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
        """DDP around a replicated head (ddp mode); the sharded head is returned as is."""
        if not self.active or isinstance(head, ShardedHead):
            return head
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(head, device_ids=ids)

    def clip_grad_norm(
        self, backbone_params: Iterable[nn.Parameter], head: nn.Module, max_norm: float
    ) -> Tensor:
        """Clip to a global L2 norm; with a sharded head its norm² is summed over ranks."""
        backbone_params = list(backbone_params)
        if not isinstance(head, ShardedHead) or not self.active:
            return nn.utils.clip_grad_norm_([*backbone_params, *head.parameters()], max_norm)
        grads = [p.grad for p in backbone_params if p.grad is not None]
        head_sq = head.weight.grad.float().pow(2).sum() if head.weight.grad is not None else (
            head.weight.new_zeros((), dtype=torch.float32)
        )
        dist.all_reduce(head_sq)
        backbone_sq = sum((g.float().pow(2).sum() for g in grads), head_sq.new_zeros(()))
        total = (backbone_sq + head_sq).sqrt()
        factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in [*backbone_params, head.weight]:
            if p.grad is not None:
                p.grad.mul_(factor.to(p.grad.dtype))
        return total

    # ------------------------------------------------------------------ checkpoints
    def head_state(self, head: nn.Module) -> dict[str, Tensor] | None:
        """The full head's state dict (a collective when sharded; None off rank 0)."""
        if isinstance(head, ShardedHead):
            return head.full_state_dict()
        return head.state_dict()

    def load_head_state(self, head: nn.Module, state: dict[str, Tensor]) -> None:
        """Load a full head state (this rank's rows of it when sharded)."""
        if isinstance(head, ShardedHead):
            head.load_full_state_dict(state)
        else:
            head.load_state_dict(state)

    def optimizer_state(
        self, optimizer: torch.optim.Optimizer, head: nn.Module
    ) -> dict[str, Any] | None:
        """The optimizer state with the head's per-class buffers gathered to full size."""
        state = optimizer.state_dict()
        if not isinstance(head, ShardedHead):
            return state
        index = _parameter_index(optimizer, head.weight)
        per_param = dict(state["state"].get(index, {}))
        for key in sorted(per_param):
            value = per_param[key]
            if isinstance(value, Tensor) and value.shape == head.weight.shape:
                per_param[key] = head.gather_rows(value)
        if not self.is_main:
            return None
        if per_param:
            state["state"] = {**state["state"], index: per_param}
        return state

    def local_optimizer_state(
        self, state: dict[str, Any], optimizer: torch.optim.Optimizer, head: nn.Module
    ) -> dict[str, Any]:
        """A full-head optimizer state with this rank's rows of the head's buffers."""
        if not isinstance(head, ShardedHead):
            return state
        index = _parameter_index(optimizer, head.weight)
        per_param = dict(state["state"].get(index, {}))
        full_shape = (head.num_classes, head.embedding_dim)
        for key, value in per_param.items():
            if isinstance(value, Tensor) and tuple(value.shape) == full_shape:
                per_param[key] = value[head.shard_start : head.shard_stop].clone()
        if not per_param:
            return state
        return {**state, "state": {**state["state"], index: per_param}}

    def save_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        """Rank 0 writes `state` atomically; the other ranks write nothing."""
        from eqmcli.checkpoint import save_checkpoint

        if self.is_main:
            save_checkpoint(state, path)


def _parameter_index(optimizer: torch.optim.Optimizer, parameter: nn.Parameter) -> int:
    """The integer key of `parameter` in `optimizer.state_dict()["state"]`."""
    index = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p is parameter:
                return index
            index += 1
    raise ValueError("the head's weight is not in the optimizer")


def init_distributed(
    device_text: str, mode: str = "ddp"
) -> tuple[DistributedContext, torch.device]:
    """The context and device of this process; joins the process group under torchrun.

    Under torchrun the backend is NCCL when the device resolves to CUDA (the device
    becomes `cuda:LOCAL_RANK`) and Gloo otherwise. A group that already exists is reused.
    """
    from eqmcli.devices import resolve_device

    device = resolve_device(device_text)
    if not launched_by_torchrun():
        return DistributedContext(mode=mode), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device_text in ("auto", "cuda"):
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
        owns = True
    context = DistributedContext(
        rank=rank, world_size=world, local_rank=local_rank, active=True, owns_group=owns,
        mode=mode,
    )
    return context, device


def build_training_head(
    recipe: Any, num_classes: int, context: DistributedContext
) -> nn.Module:
    """The head of a run: the plain loss head, or a `ShardedHead` in sharded mode."""
    from eqmcli.losses import build_head

    hyperparameters = recipe.loss.hyperparameters()
    sample_rate = recipe.train.sample_rate
    if recipe.train.distributed == "sharded":
        return ShardedHead(
            recipe.loss.name, num_classes, recipe.model.embedding_dim,
            group=None, sample_rate=sample_rate, seed=recipe.seed, **hyperparameters,
        )
    if sample_rate < 1.0:
        raise UserError(
            f"train.sample_rate {sample_rate:g} (Partial FC) needs train.distributed: sharded"
        )
    return build_head(
        recipe.loss.name, num_classes=num_classes, embedding_dim=recipe.model.embedding_dim,
        **hyperparameters,
    )


def rescale_resumed_step(
    state: dict[str, Any], num_samples: int, global_batch: int, steps_per_epoch: int
) -> int:
    """The step to resume at when the global batch (ranks × batch) changed since the save.

    Keeps the completed epochs and the samples consumed in the current one; returns
    `state["step"]` unchanged when the global batch is the same.
    """
    step = int(state["step"])
    saved_batch = int(state.get("global_batch", global_batch))
    if saved_batch == global_batch:
        return step
    saved_per_epoch = max(num_samples // saved_batch, 1)
    epochs, within = divmod(step, saved_per_epoch)
    return epochs * steps_per_epoch + min(within * saved_batch // global_batch, steps_per_epoch)


def set_scheduler_step(scheduler: Any, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Move a LambdaLR to `step` (after a rescaled resume) and set the lr it implies."""
    scheduler.last_epoch = step
    scheduler._step_count = step + 1
    for group, base, fn in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * fn(step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


__all__ = [
    "TORCHRUN_VARIABLES",
    "DistributedContext",
    "NullMetrics",
    "ShardedHead",
    "all_gather_rows",
    "build_training_head",
    "init_distributed",
    "launched_by_torchrun",
    "rescale_resumed_step",
    "set_scheduler_step",
    "shard_bounds",
    "sharded_target_log_prob",
]
