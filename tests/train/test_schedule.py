"""`eqmcli.train.schedule`: the lr of each optimizer step, tested directly (no training)."""

from __future__ import annotations

import math

import pytest
import torch

from eqmcli.run.recipe import OptimSection
from eqmcli.train.schedule import LrSchedule

STEPS_PER_EPOCH = 10
TOTAL_STEPS = 50


def _schedule(**optim: object) -> LrSchedule:
    return LrSchedule(OptimSection(lr=0.1, **optim), STEPS_PER_EPOCH, TOTAL_STEPS)


def test_warmup_rises_linearly_to_the_full_lr_at_its_last_step():
    schedule = _schedule(schedule="constant", warmup_epochs=1)
    assert schedule.lr(0) == pytest.approx(0.1 / 10)
    assert schedule.lr(4) == pytest.approx(0.1 * 5 / 10)
    assert schedule.lr(9) == pytest.approx(0.1)
    assert schedule.lr(10) == pytest.approx(0.1)


def test_multistep_multiplies_by_the_decay_factor_at_each_milestone():
    schedule = _schedule(schedule="multistep", milestones=[3, 1.5], decay_factor=0.5)
    lrs = [schedule.lr(step) for step in (0, 14, 15, 29, 30, 49)]
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_cosine_starts_at_the_lr_after_warmup_and_ends_at_the_floor():
    schedule = _schedule(schedule="cosine", warmup_epochs=1, min_lr_ratio=0.1)
    assert schedule.lr(10) == pytest.approx(0.1)
    halfway = 10 + (TOTAL_STEPS - 10) // 2
    assert schedule.lr(halfway) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert schedule.lr(TOTAL_STEPS) == pytest.approx(0.01)
    assert schedule.lr(TOTAL_STEPS + 100) == pytest.approx(0.01)


def test_poly_decays_with_its_power_to_the_floor():
    schedule = _schedule(schedule="poly", power=2.0)
    assert schedule.lr(0) == pytest.approx(0.1)
    assert schedule.lr(25) == pytest.approx(0.1 * 0.5**2)
    assert schedule.lr(TOTAL_STEPS) == pytest.approx(0.0)


def test_each_step_lr_is_a_pure_function_of_the_step_and_decays_after_warmup():
    schedule = _schedule(schedule="cosine", warmup_epochs=0.5)
    forward = [schedule.lr(step) for step in range(TOTAL_STEPS)]
    backward = [schedule.lr(step) for step in reversed(range(TOTAL_STEPS))][::-1]
    assert forward == backward
    assert all(b <= a for a, b in zip(forward[5:-1], forward[6:], strict=True))
    assert all(math.isfinite(lr) and lr > 0 for lr in forward)


def test_apply_sets_every_group_and_state_dict_records_step_and_base_lr():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    schedule = _schedule(schedule="multistep", milestones=[1])
    assert schedule.apply(optimizer, 12) == pytest.approx(0.01)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.01, 0.01])
    assert schedule.state_dict(12) == {"step": 12, "base_lr": 0.1}
