"""The training step: the one function `eqm train` runs and `eqm bench train` times.

`train_step` takes a uint8 host batch through everything a step does: conversion on the
device (normalize, flip, channels_last, resize), the learning rate of this step, forward
under autocast and backward through the GradScaler (in `train.grad_accumulation` parts),
optional clipping to a global gradient norm (ranks of a class-sharded head agree on an fp16
overflow first), the optimizer and scaler steps, and the NaN/Inf flag (kept on the device:
no synchronization). `StepParts` holds what it needs; both callers build it the same way
(`place_model`, `build_optimizer`, `compiled`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from eqmcli.data.transforms import to_model_input
from eqmcli.devices import autocast
from eqmcli.losses import Head
from eqmcli.run.recipe import OptimSection
from eqmcli.train.schedule import LrSchedule

Forward = Callable[..., Tensor]


def optimizer_settings(optim: OptimSection) -> dict[str, float]:
    """The per-group hyperparameters the recipe sets (the lr is set by the schedule)."""
    if optim.name == "sgd":
        return {"momentum": optim.momentum, "weight_decay": optim.weight_decay}
    return {"weight_decay": optim.weight_decay}


def build_optimizer(optim: OptimSection, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over backbone and head parameters."""
    settings = optimizer_settings(optim)
    if optim.name == "sgd":
        return torch.optim.SGD(parameters, lr=optim.lr, **settings)
    return torch.optim.AdamW(parameters, lr=optim.lr, **settings)


def apply_optimizer_settings(optimizer: torch.optim.Optimizer, optim: OptimSection) -> None:
    """Overwrite the hyperparameters a restored optimizer state brought back with the recipe's."""
    for group in optimizer.param_groups:
        group.update(optimizer_settings(optim))


@dataclass
class StepParts:
    """Everything one optimizer step touches.

    `backbone` and `head` are the modules themselves; `forward_backbone` and
    `forward_head` are what is called (DDP-wrapped, compiled), which may be the same
    objects. `input_size` is (height, width) in pixels; `amp_dtype` None means float32.
    `micro_batches` (`train.grad_accumulation`) splits each step's batch into that many
    forward/backward passes whose gradients add up before the one optimizer step.
    """

    backbone: nn.Module
    head: Head
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    input_size: tuple[int, int]
    grad_clip: float | None = None
    micro_batches: int = 1
    forward_backbone: Forward | None = None
    forward_head: Forward | None = None
    scaler: torch.amp.GradScaler = field(init=False)
    non_finite: Tensor = field(init=False)

    def __post_init__(self) -> None:
        # `is None`, not `or`: a compiled module's truth value asks for its len()
        if self.forward_backbone is None:
            self.forward_backbone = self.backbone
        if self.forward_head is None:
            self.forward_head = self.head
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.non_finite = torch.zeros((), dtype=torch.bool, device=self.device)


def place_model(
    backbone: nn.Module, head: nn.Module, device: torch.device, *, channels_last: bool
) -> None:
    """Move both modules to `device` (the backbone to NHWC when `channels_last`), train mode."""
    backbone.to(device)
    head.to(device)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    backbone.train()
    head.train()


def compiled(module: nn.Module, enabled: bool) -> Forward:
    """`torch.compile(module)` when `enabled`, else the module itself."""
    return torch.compile(module) if enabled else module  # type: ignore[return-value]


def train_step(
    parts: StepParts,
    images: Tensor,
    labels: Tensor,
    flip: Tensor,
    step: int,
    *,
    collect_stats: bool = True,
) -> Tensor:
    """One optimizer step on a uint8 host batch `(B, 3, H, W)`; returns the detached loss.

    `flip` (bool `(B,)`) mirrors those samples; `step` (0-based) picks the learning rate;
    `collect_stats` asks the head for its `last_stats` (the trainer does on logging steps).
    """
    parts.schedule.apply(parts.optimizer, step)
    parts.optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(parts, images, labels, flip, collect_stats=collect_stats)
    unscale_and_clip(parts)
    parts.non_finite |= ~torch.isfinite(loss)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return loss


def accumulate_gradients(
    parts: StepParts, images: Tensor, labels: Tensor, flip: Tensor, *, collect_stats: bool
) -> Tensor:
    """Forward and backward the batch in `parts.micro_batches` equal parts, adding up the
    gradients of their mean losses / K (together the gradient of the batch's mean loss);
    returns the batch's mean loss, detached. Statistics come from the last part.

    Under DDP the parts before the last run under `no_sync`: their gradients add up on each
    rank and only the last backward exchanges them, once per optimizer step as without
    accumulation (a class-sharded head's own collectives still run in every part)."""
    count = parts.micro_batches
    total = torch.zeros((), device=parts.device)
    deferred = ddp_wrappers(parts.forward_backbone, parts.forward_head) if count > 1 else []
    pieces = zip(images.chunk(count), labels.chunk(count), flip.chunk(count), strict=True)
    for index, (part_images, part_labels, part_flip) in enumerate(pieces):
        inputs = to_model_input(
            part_images, parts.device, flip_mask=part_flip, channels_last=parts.channels_last,
            size=parts.input_size,
        )
        part_labels = part_labels.to(parts.device, non_blocking=True)
        parts.head.collect_stats = collect_stats and index == count - 1
        with contextlib.ExitStack() as sync_later:
            if index < count - 1:
                for wrapper in deferred:
                    sync_later.enter_context(wrapper.no_sync())
            with autocast(parts.device, parts.amp_dtype):
                loss = parts.forward_head(parts.forward_backbone(inputs), part_labels)
            parts.scaler.scale(loss / count).backward()
        total += loss.detach()
    return total / count


def ddp_wrappers(*modules: Forward | None) -> list[DistributedDataParallel]:
    """The DDP wrappers among `modules`, also when compiled (`torch.compile` keeps the
    wrapped module as `_orig_mod`)."""
    found = (getattr(module, "_orig_mod", module) for module in modules)
    return [module for module in found if isinstance(module, DistributedDataParallel)]


def unscale_and_clip(parts: StepParts) -> None:
    """Unscale the gradients where the step needs them unscaled, then clip them.

    Needed for clipping (`grad_clip`: a global L2 norm through the head's reduction) and
    for fp16 with a class-sharded head, whose ranks must agree on skipping the step
    (`share_overflow`). Otherwise `scaler.step` unscales on its own.
    """
    sharded_fp16 = parts.scaler.is_enabled() and not parts.head.reduction.replicated
    if parts.grad_clip is None and not sharded_fp16:
        return
    parts.scaler.unscale_(parts.optimizer)
    if sharded_fp16:
        share_overflow(parts.scaler, parts.optimizer, parts.head)
    if parts.grad_clip is not None:
        parts.head.reduction.clip_grad_norm(
            parts.backbone.parameters(), parts.head.parameters(), parts.grad_clip
        )


def share_overflow(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer,
                   head: Head) -> None:
    """After `scaler.unscale_(optimizer)`: make the scaler's inf/NaN flag of this step the
    one of every rank (`head.reduction.overflow_anywhere`).

    A class-sharded head's gradients stay on their rank (the backbone's are all-reduced,
    so an inf there reaches every rank anyway): without this, an overflow in one rank's
    head slice makes only that rank skip the step and halve its scale, and the ranks'
    backbones drift apart. Reads GradScaler's per-optimizer flags (a private field, there
    since torch 1.6); stays on the device (no host sync).
    """
    flags = scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
    anywhere = head.reduction.overflow_anywhere(torch.stack(list(flags.values())).amax())
    for flag in flags.values():
        flag.copy_(anywhere)
