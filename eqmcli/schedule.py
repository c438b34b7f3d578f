"""Learning-rate schedules as a multiplier of the base lr, per optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable

from eqmcli.recipe import OptimSection


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
