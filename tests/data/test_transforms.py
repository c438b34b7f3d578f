"""Device-side batch transforms: normalization, per-sample flip, resize, flip masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eqmcli.data.transforms import random_flip_mask, to_model_input


def batch(b: int = 4, h: int = 6, w: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), generator=torch.Generator().manual_seed(0)).to(
        torch.uint8
    )


def test_normalization_is_exact() -> None:
    x = batch()
    out = to_model_input(x, "cpu")
    assert out.dtype == torch.float32 and out.shape == x.shape
    expected = (x.float() / 255.0 - 0.5) / 0.5
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    extremes = to_model_input(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2), "cpu")
    assert extremes.flatten().tolist() == [-1.0, 1.0]


def test_flip_only_masked_samples() -> None:
    x = batch()
    mask = torch.tensor([True, False, True, False])
    out = to_model_input(x, "cpu", flip_mask=mask)
    plain = to_model_input(x, "cpu")
    assert torch.equal(out[0], plain[0].flip(-1)) and torch.equal(out[2], plain[2].flip(-1))
    assert torch.equal(out[1], plain[1]) and torch.equal(out[3], plain[3])
    with pytest.raises(ValueError):
        to_model_input(x, "cpu", flip_mask=torch.tensor([True]))


def test_resize_bilinear() -> None:
    x = batch(2, 8, 8)
    plain = to_model_input(x, "cpu")
    up = to_model_input(x, "cpu", size=(12, 10))
    assert up.shape == (2, 3, 12, 10)
    torch.testing.assert_close(
        up, F.interpolate(plain, size=(12, 10), mode="bilinear", align_corners=False)
    )
    down = to_model_input(x, "cpu", size=(4, 4))
    torch.testing.assert_close(
        down,
        F.interpolate(plain, size=(4, 4), mode="bilinear", align_corners=False, antialias=True),
    )
    # a uniform image stays uniform, in range
    flat = torch.full((1, 3, 8, 8), 200, dtype=torch.uint8)
    torch.testing.assert_close(
        to_model_input(flat, "cpu", size=(5, 3)), torch.full((1, 3, 5, 3), 200 / 127.5 - 1)
    )
    assert torch.equal(to_model_input(x, "cpu", size=(8, 8)), plain)  # same size: untouched


def test_flip_then_resize_and_channels_last() -> None:
    x = batch(3, 8, 8)
    mask = torch.tensor([False, True, False])
    out = to_model_input(x, "cpu", flip_mask=mask, channels_last=True, size=(16, 16))
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = to_model_input(x, "cpu", size=(16, 16))
    torch.testing.assert_close(out[1], ref[1].flip(-1))
    torch.testing.assert_close(out[0], ref[0])


def test_rejects_float_input() -> None:
    with pytest.raises(TypeError):
        to_model_input(torch.zeros(1, 3, 4, 4), "cpu")


def test_random_flip_mask() -> None:
    a = random_flip_mask(1000, torch.Generator().manual_seed(3))
    b = random_flip_mask(1000, torch.Generator().manual_seed(3))
    c = random_flip_mask(1000, torch.Generator().manual_seed(4))
    assert a.dtype == torch.bool and a.shape == (1000,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.4 < a.float().mean().item() < 0.6
    assert not random_flip_mask(50, torch.Generator().manual_seed(0), p=0.0).any()
