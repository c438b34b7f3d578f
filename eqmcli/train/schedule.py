"""Learning-rate schedules: the lr of optimizer step t is `optim.lr × multiplier(t)`.

The lr is a pure function of the step and the recipe, set on the optimizer before each
step (`LrSchedule.apply`), so a resumed run (even with a changed schedule or batch size)
needs nothing but its step count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from eqmcli.run.recipe import OptimSection


def lr_multiplier(
    optim: OptimSection, steps_per_epoch: int, total_steps: int
) -> Callable[[int], float]:
    """Linear warmup from 0 over `warmup_epochs`, then cosine / multistep / poly / constant.

    `step` counts optimizer steps from 0; milestones are in epochs (fractions allowed).
    """
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    milestones = sorted(int(round(m * steps_per_epoch)) for m in optim.milestones)
    floor = optim.min_lr_ratio

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        if optim.schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if optim.schedule == "poly":
            return floor + (1 - floor) * (1 - progress) ** optim.power
        if optim.schedule == "multistep":
            passed = sum(1 for milestone in milestones if step >= milestone)
            return optim.decay_factor**passed
        return 1.0

    return multiplier


class LrSchedule:
    """The recipe's schedule over a run of `total_steps` optimizer steps."""

    def __init__(self, optim: OptimSection, steps_per_epoch: int, total_steps: int) -> None:
        self.base_lr = optim.lr
        self.multiplier = lr_multiplier(optim, steps_per_epoch, total_steps)

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        return self.base_lr * self.multiplier(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's lr to that of step `step`; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self, step: int) -> dict[str, float | int]:
        """What a checkpoint records of the schedule (the step decides everything else)."""
        return {"step": step, "base_lr": self.base_lr}
