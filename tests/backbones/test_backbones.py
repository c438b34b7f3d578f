"""Tests for eqmcli.backbones: shapes, size handling, memory formats, autocast, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqmcli.backbones import BACKBONE_NAMES, build_backbone, default_input_size
from eqmcli.errors import UserError

# Real forward+backward passes at reduced sizes to stay cheap on 2 CPU cores; every net's
# default size is covered on the meta device.
SMALL = (
    ("iresnet18", (32, 32)),
    ("sphere20", (64, 48)),
    ("mobilefacenet", (64, 64)),
    ("tiny", None),
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_names_and_default_sizes() -> None:
    assert set(BACKBONE_NAMES) == {
        "iresnet18",
        "iresnet34",
        "iresnet50",
        "iresnet100",
        "sphere20",
        "sphere64",
        "mobilefacenet",
        "mbf",
        "tiny",
    }
    assert default_input_size("iresnet50") == (112, 112)
    assert default_input_size("sphere20") == (112, 96)
    assert default_input_size("sphere64") == (112, 96)
    assert default_input_size("mobilefacenet") == (112, 112)
    h, w = default_input_size("tiny")
    assert 32 <= h <= 64 and 32 <= w <= 64


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_default_size_shapes_on_meta(name: str) -> None:
    """Every net, the big ones included, maps its default size to (B, d) (no compute)."""
    size = default_input_size(name)
    with torch.device("meta"):
        net = build_backbone(name, embedding_dim=96, input_size=size)
        out = net(torch.empty(2, 3, *size))
    assert out.shape == (2, 96)
    assert net.embedding_dim == 96 and net.input_size == size


@pytest.mark.parametrize(("name", "size"), SMALL)
def test_small_nets_train_step(name: str, size: tuple[int, int] | None) -> None:
    torch.manual_seed(0)
    size = size or default_input_size(name)
    net = build_backbone(name, embedding_dim=64, input_size=size).train()
    out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", ["iresnet50", "iresnet100", "sphere64"])
def test_big_nets_eval_forward_small_input(name: str) -> None:
    """Real (finite) numbers from the deep nets, at a small size to stay cheap."""
    torch.manual_seed(0)
    net = build_backbone(name, embedding_dim=32, input_size=(32, 32)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "size", [(24, 24), (32, 32), (40, 56), (48, 48), (64, 64), (112, 96), (128, 128)]
)
def test_tiny_accepts_sizes_24_to_128(size: tuple[int, int]) -> None:
    net = build_backbone("tiny", embedding_dim=128, input_size=size).train()
    out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 128) and torch.isfinite(out).all()


def test_iresnet_fc_adapts_to_input_size() -> None:
    with torch.device("meta"):
        for size, cells in [((112, 112), 7 * 7), ((64, 64), 4 * 4), ((112, 96), 7 * 6)]:
            net = build_backbone("iresnet18", input_size=size).eval()
            assert net.head.fc.in_features == 512 * cells
            assert net(torch.empty(1, 3, *size)).shape == (1, 512)


def test_iresnet_parameter_counts() -> None:
    """IResNet-50 at 112 px / 512-d is ~43.6M parameters, as the public arcface_torch model."""
    with torch.device("meta"):
        counts = {d: n_params(build_backbone(f"iresnet{d}")) for d in (18, 34, 50, 100)}
    assert 43.0e6 < counts[50] < 44.2e6
    assert 64.5e6 < counts[100] < 65.8e6
    assert counts[18] < counts[34] < counts[50] < counts[100]


def test_mobilefacenet_is_about_one_million_parameters_at_128d() -> None:
    """Chen et al. report 0.99M parameters for the 128-d MobileFaceNet."""
    with torch.device("meta"):
        count = n_params(build_backbone("mobilefacenet", embedding_dim=128))
    assert 0.95e6 < count < 1.05e6


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("tiny", (48, 48)),
        ("mobilefacenet", (112, 112)),
        ("iresnet18", (48, 48)),
        ("sphere20", (64, 48)),
    ],
)
def test_channels_last_matches_contiguous(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = build_backbone(name, embedding_dim=64, input_size=size).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = net(x)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "size"), [("tiny", (48, 48)), ("iresnet18", (32, 32))])
def test_bf16_autocast_channels_last_train_step(name: str, size: tuple[int, int]) -> None:
    net = build_backbone(name, embedding_dim=64, input_size=size).train()
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, *size).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.shape == (4, 64) and torch.isfinite(out.float()).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_embedding_is_raw_not_normalized() -> None:
    torch.manual_seed(0)
    net = build_backbone("tiny", embedding_dim=64, input_size=(32, 32)).train()
    norms = net(torch.randn(8, 3, 32, 32)).norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)


def test_unknown_name_is_a_user_error() -> None:
    with pytest.raises(UserError, match="resnet9000"):
        build_backbone("resnet9000")
    with pytest.raises(UserError, match="tiny"):  # the message lists the valid names
        default_input_size("Tiny")


@pytest.mark.parametrize(
    ("name", "size"),
    [("tiny", (16, 16)), ("tiny", (48, 200)), ("iresnet50", (8, 8)), ("mobilefacenet", (112, 12))],
)
def test_input_size_the_net_cannot_take(name: str, size: tuple[int, int]) -> None:
    with pytest.raises(UserError, match=rf"{name}.*{size[0]}x{size[1]}"):
        build_backbone(name, input_size=size)


def test_malformed_arguments_are_user_errors() -> None:
    with pytest.raises(UserError, match="input_size"):
        build_backbone("tiny", input_size=(48,))
    with pytest.raises(UserError, match="input_size"):
        build_backbone("tiny", input_size=48)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="input_size"):
        build_backbone("tiny", input_size=(48.5, 48))
    with pytest.raises(UserError, match="embedding_dim"):
        build_backbone("tiny", embedding_dim=0)
