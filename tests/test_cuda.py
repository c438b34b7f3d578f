"""The CUDA code path: device choice, bf16 autocast, channels_last. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from eqmcli.devices import autocast, autocast_dtype, gpu_has_native_bf16, resolve_device
from eqmcli.recipe import load_recipe
from eqmcli.train import train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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
    recipe = load_recipe(tiny_recipe_path, ["train.device=cuda", "train.epochs=1"])
    summary = train(recipe, tmp_path / "run", progress=False)
    assert summary.steps > 0
    assert 0.0 <= summary.evaluations[-1]["accuracy"] <= 1.0


@pytest.mark.cuda
@needs_cuda
def test_fp16_training_uses_a_grad_scaler_and_stays_finite(tiny_recipe_path, tmp_path):
    recipe = load_recipe(tiny_recipe_path, ["train.device=cuda", "train.epochs=1",
                                            "train.precision=fp16"])
    summary = train(recipe, tmp_path / "run", progress=False)
    assert summary.steps > 0
