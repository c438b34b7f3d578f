"""Issue 18's single-process faults of the CUDA path, reproduced and checked on the CPU.

fp16 on the CPU (`torch.autocast("cpu", dtype=torch.float16)` with a CPU `GradScaler`)
stands in for CUDA fp16: the scaler code is the same.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import eqmcli.train.setup as trainer_setup
from eqmcli.devices import autocast_dtype, set_training_speed
from eqmcli.losses import build_head
from eqmcli.run.checkpoint import load_checkpoint
from eqmcli.run.recipe import load_recipe
from eqmcli.train import train


def fp16_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the trainer's precision resolve to float16 (the CUDA-only choice) on the CPU."""
    monkeypatch.setattr(trainer_setup, "autocast_dtype", lambda *args, **kwargs: torch.float16)


def test_fp16_resume_from_a_checkpoint_without_scaler_state(
    tiny_recipe_path, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    train(load_recipe(tiny_recipe_path, ["train.epochs=1", "eval.every_epochs=0",
                                         "train.precision=fp32"]), run, progress=False)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["scaler"] == {}
    fp16_on_the_cpu(monkeypatch)
    summary = train(load_recipe(tiny_recipe_path, ["train.epochs=2", "eval.every_epochs=0"]),
                    run, resume=True, progress=False)
    assert summary.epochs_done == 2
    scaler = load_checkpoint(run / "checkpoints" / "last.pt")["scaler"]
    assert scaler["scale"] > 0, "the fp16 run saved its own, active scaler"


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_on_cuda_is_bf16_only_where_the_gpu_has_native_bf16(
    monkeypatch, native, expected
):
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native or including_emulation  # pre-Ampere GPUs only emulate bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    cuda = torch.device("cuda")
    assert autocast_dtype("auto", cuda, training=True) == expected
    assert autocast_dtype("auto", cuda) == expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_head_cosines_are_float32_exact_under_autocast(dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=generator).to(dtype)  # a backbone's autocast output
    weight = torch.randn(1000, 128, generator=generator)
    exact = F.normalize(x.double(), dim=1) @ F.normalize(weight.double(), dim=1).T
    head = build_head("eqm", num_classes=1000, embedding_dim=128)
    with torch.no_grad():
        head.weight.copy_(weight)
    with torch.autocast("cpu", dtype=dtype):
        cos = head.cosine(x)
    assert cos.dtype == torch.float32
    # float32 rounding of a length-128 dot product; bf16 would be off by ~2e-3
    assert (cos.double() - exact).abs().max() < 1e-5


SPEED_FLAGS = ((torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "allow_tf32"),
               (torch.backends.cuda.matmul, "allow_tf32"))


@pytest.fixture
def speed_flags_restored():
    """Put torch's global speed flags back afterwards. (Not `monkeypatch`: the cuBLAS flag
    is served by the module's `__getattr__`, and pytest >= 9.2 then deletes it on undo.)"""
    saved = [(owner, name, getattr(owner, name)) for owner, name in SPEED_FLAGS]
    yield
    for owner, name, value in saved:
        setattr(owner, name, value)


def test_training_turns_on_tf32_and_cudnn_benchmark_on_cuda(speed_flags_restored):
    for owner, name in SPEED_FLAGS:
        setattr(owner, name, False)
    assert set_training_speed(torch.device("cpu")) == {
        "cudnn_benchmark": False, "tf32_matmul": False, "tf32_cudnn": False,
    }, "nothing changes off CUDA"
    assert set_training_speed(torch.device("cuda")) == {
        "cudnn_benchmark": True, "tf32_matmul": True, "tf32_cudnn": True,
    }
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32


def test_the_speed_settings_are_recorded_in_the_runs_environment_record(tiny_run):
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").open()]
    environment = [r for r in records if r["kind"] == "environment"]
    assert len(environment) == 1 and environment[0]["step"] == 0
    assert environment[0]["device"] == "cpu" and environment[0]["world_size"] == 1
    assert {"cudnn_benchmark", "tf32_matmul", "tf32_cudnn", "autocast", "torch"} <= set(
        environment[0]
    )


def test_step_parts_take_a_compiled_backbone_without_asking_its_length():
    from eqmcli.backbones import build_backbone
    from eqmcli.run.recipe import OptimSection
    from eqmcli.train.schedule import LrSchedule
    from eqmcli.train.step import StepParts, build_optimizer

    backbone = build_backbone("iresnet18", embedding_dim=8, input_size=(112, 112))
    head = build_head("eqm", num_classes=4, embedding_dim=8)
    compiled = torch.compile(backbone)  # not run: wrapping only (found on the first GPU run)
    optim = OptimSection(lr=0.1)
    parts = StepParts(
        backbone=backbone, head=head, optimizer=build_optimizer(optim, [head.weight]),
        schedule=LrSchedule(optim, 1, 1), device=torch.device("cpu"), amp_dtype=None,
        channels_last=False, input_size=(112, 112), forward_backbone=compiled,
    )
    assert parts.forward_backbone is compiled and parts.forward_head is head
