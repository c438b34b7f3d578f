"""Issue 18's multi-rank faults, reproduced and checked on the CPU.

Multi-process cases run 2 Gloo ranks with the harness of `tests/test_distributed.py`;
GPU-count cases pretend CUDA GPUs exist (they fail before any GPU would be touched).
"""

from __future__ import annotations

import pytest
import torch

from eqmcli.data.loader import default_num_workers
from eqmcli.distributed import init_distributed
from eqmcli.errors import UserError


def torchrun_environment(
    monkeypatch: pytest.MonkeyPatch, *, world: int, local_rank: int, gpus: int
) -> None:
    """torchrun's variables for one rank, on a machine that says it has `gpus` GPUs."""
    for name, value in {"RANK": local_rank, "WORLD_SIZE": world, "LOCAL_RANK": local_rank,
                        "LOCAL_WORLD_SIZE": world}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


def test_fixed_cuda_device_with_several_ranks_is_refused(monkeypatch):
    torchrun_environment(monkeypatch, world=2, local_rank=1, gpus=2)
    with pytest.raises(UserError, match=r"'cuda:0' would put all 2 torchrun ranks on one GPU"):
        init_distributed("cuda:0")


def test_local_rank_beyond_the_gpu_count_is_one_sentence(monkeypatch):
    torchrun_environment(monkeypatch, world=4, local_rank=2, gpus=2)
    with pytest.raises(UserError, match="local rank 2 but this machine has 2 CUDA GPU"):
        init_distributed("cuda")


def test_default_loader_workers_are_divided_among_the_ranks_of_a_machine(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_num_workers(cpus=16) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_num_workers(cpus=16) == 1, "16 CPUs shared by 8 ranks: 2 each"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_num_workers(cpus=16) == 7


def test_process_group_timeout_comes_from_the_recipe(monkeypatch, tiny_recipe_path, tmp_path):
    from datetime import timedelta

    import torch.distributed as dist

    import eqmcli.train.trainer as trainer
    from eqmcli.recipe import load_recipe

    default = load_recipe(tiny_recipe_path).train.process_group_timeout_s
    assert default >= 30 * 60, "generous: rank 0 evaluates while the others wait"
    recipe = load_recipe(tiny_recipe_path, ["train.process_group_timeout_s=90"])

    def joined(device_text: str, mode: str, **kwargs: float) -> None:
        raise UserError(f"asked for {kwargs}")

    monkeypatch.setattr(trainer, "init_distributed", joined)
    with pytest.raises(UserError, match="'timeout_s': 90.0"):
        trainer.train(recipe, tmp_path / "run", progress=False)

    asked: dict = {}
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: asked.update(kwargs))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    torchrun_environment(monkeypatch, world=2, local_rank=0, gpus=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    init_distributed("cpu", timeout_s=90.0)
    assert asked["backend"] == "gloo" and asked["timeout"] == timedelta(seconds=90)
