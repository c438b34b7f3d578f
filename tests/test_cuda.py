"""The CUDA code path: device choice, autocast, channels_last, compile, the fp16 GradScaler,
resume across precisions and the sharded head over NCCL. Skipped without a GPU;
`benchmarks/gpu_check.sh` runs every test marked `cuda` in the suite."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eqmcli.devices import autocast, autocast_dtype, gpu_has_native_bf16, resolve_device
from eqmcli.run.checkpoint import load_checkpoint
from eqmcli.run.recipe import load_recipe
from eqmcli.train import train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
REPO = Path(__file__).resolve().parents[1]


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_auto_device_and_precision_follow_the_hardware():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        assert autocast_dtype("auto", device) == (
            torch.bfloat16 if gpu_has_native_bf16() else torch.float16
        )
    else:
        assert autocast_dtype("auto", device) is None


@pytest.mark.cuda
@needs_cuda
def test_heads_are_float32_and_finite_under_bf16_autocast_on_cuda():
    from eqmcli.backbones import build_backbone
    from eqmcli.losses import LOSS_NAMES, build_head

    device = torch.device("cuda")
    backbone = build_backbone("tiny", embedding_dim=32, input_size=(32, 32)).to(device)
    backbone = backbone.to(memory_format=torch.channels_last)
    images = torch.randn(8, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    labels = torch.arange(8, device=device) % 5
    for name in LOSS_NAMES:
        head = build_head(name, num_classes=5, embedding_dim=32).to(device)
        with autocast(device, torch.bfloat16):
            loss = head(backbone(images), labels)
        assert loss.dtype == torch.float32, name
        assert torch.isfinite(loss), name
        loss.backward()
        assert torch.isfinite(head.weight.grad).all(), name


@pytest.mark.cuda
@needs_cuda
def test_training_runs_on_cuda_with_bf16_and_channels_last(tiny_recipe_path, tmp_path):
    recipe = load_recipe(tiny_recipe_path, ["train.device=cuda", "train.precision=bf16",
                                            "train.channels_last=true"])
    run = tmp_path / "run"
    summary = train(recipe, run, progress=False)
    (environment,) = records(run, "environment")
    assert environment["device"].startswith("cuda") and environment["autocast"] == "bfloat16"
    assert environment["cudnn_benchmark"] and environment["tf32_matmul"]
    losses = [r["loss"] for r in records(run, "step")]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) < sum(losses[:3]), "the loss falls: it trains"
    assert summary.evaluations[-1]["accuracy"] > 0.5, "better than chance on its pairs"


@pytest.mark.cuda
@needs_cuda
def test_training_runs_compiled_with_channels_last_and_bf16_on_cuda(tiny_recipe_path, tmp_path):
    recipe = load_recipe(tiny_recipe_path, ["train.device=cuda", "train.precision=bf16",
                                            "train.compile=true", "eval.every_epochs=0"])
    run = tmp_path / "run"
    summary = train(recipe, run, progress=False)
    losses = [r["loss"] for r in records(run, "step")]
    assert summary.steps == len(losses) > 0 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) < sum(losses[:3])


@pytest.mark.cuda
@needs_cuda
def test_fp16_training_uses_a_grad_scaler_and_stays_finite(tiny_recipe_path, tmp_path):
    recipe = load_recipe(tiny_recipe_path, ["train.device=cuda", "train.precision=fp16",
                                            "eval.every_epochs=0"])
    run = tmp_path / "run"
    train(recipe, run, progress=False)
    (environment,) = records(run, "environment")
    assert environment["autocast"] == "float16" and environment["grad_scaler"]
    assert all(math.isfinite(r["loss"]) for r in records(run, "step"))
    scaler = load_checkpoint(run / "checkpoints" / "last.pt")["scaler"]
    assert 0 < scaler["scale"] < math.inf, "the scaler's state is saved"


@pytest.mark.cuda
@needs_cuda
def test_fp16_grad_scaler_skips_an_overflowing_step_and_no_other():
    from eqmcli.backbones import build_backbone
    from eqmcli.losses import build_head
    from eqmcli.run.recipe import OptimSection
    from eqmcli.train.schedule import LrSchedule
    from eqmcli.train.step import StepParts, build_optimizer, place_model, train_step

    device, steps, overflow = torch.device("cuda"), 6, 3
    torch.manual_seed(0)
    backbone = build_backbone("tiny", embedding_dim=16, input_size=(24, 24))
    head = build_head("eqm", num_classes=8, embedding_dim=16, scale=16.0)
    place_model(backbone, head, device, channels_last=True)
    optim = OptimSection(lr=0.05)
    parts = StepParts(
        backbone=backbone, head=head,
        optimizer=build_optimizer(optim, [*backbone.parameters(), *head.parameters()]),
        schedule=LrSchedule(optim, steps, steps), device=device, amp_dtype=torch.float16,
        channels_last=True, input_size=(24, 24),
    )
    parts.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)  # no overflow of its own
    step_now = [0]
    head.weight.register_hook(
        lambda g: g.clone().fill_(math.inf) if step_now[0] == overflow else g
    )
    generator = torch.Generator().manual_seed(1)
    scales, weights, losses = [parts.scaler.get_scale()], [head.weight.detach().clone()], []
    for step in range(steps):
        step_now[0] = step
        images = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 8, (16,), generator=generator)
        loss = train_step(parts, images, labels, torch.zeros(16, dtype=torch.bool), step)
        losses.append(float(loss))
        scales.append(parts.scaler.get_scale())
        weights.append(head.weight.detach().clone())
    assert all(math.isfinite(x) for x in losses) and not bool(parts.non_finite)
    assert scales[overflow + 1] == scales[overflow] / 2, "the overflow halved the scale"
    for step in range(steps):
        moved = not torch.equal(weights[step + 1], weights[step])
        assert moved == (step != overflow), f"step {step}: only the overflowing one is skipped"


@pytest.mark.cuda
@needs_cuda
def test_resume_across_precisions_on_cuda(tiny_recipe_path, tmp_path):
    run = tmp_path / "run"
    for epochs, precision in ((1, "fp16"), (2, "bf16"), (3, "fp16")):
        recipe = load_recipe(tiny_recipe_path, [
            "train.device=cuda", f"train.precision={precision}", f"train.epochs={epochs}",
            "eval.every_epochs=0",
        ])
        summary = train(recipe, run, resume=epochs > 1, progress=False)
        assert summary.epochs_done == epochs
    autocasts = [r["autocast"] for r in records(run, "environment")]
    assert autocasts == ["float16", "bfloat16", "float16"]
    assert all(math.isfinite(r["loss"]) for r in records(run, "step"))


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA GPUs: NCCL refuses two ranks on one GPU")
def test_sharded_head_and_partial_fc_over_nccl_on_two_gpus(tiny_recipe_path, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    runs = {}
    for name, sample_rate in (("sharded", 1.0), ("partial-fc", 0.5)):
        runs[name] = tmp_path / name
        done = subprocess.run([
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", "-m", "eqmcli", "train", str(tiny_recipe_path),
            "--out", str(runs[name]), "--no-progress", "--set", "train.device=cuda",
            "--set", "train.distributed=sharded", "--set", f"train.sample_rate={sample_rate}",
            "--set", "train.precision=fp16",
        ], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        state = load_checkpoint(runs[name] / "checkpoints" / "last.pt")
        assert state["world_size"] == 2 and state["head"]["weight"].shape[0] == 8
        (environment, *_) = records(runs[name], "environment")
        assert environment["world_size"] == 2
        assert all(math.isfinite(r["loss"]) for r in records(runs[name], "step"))
