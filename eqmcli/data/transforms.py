"""Batch transforms that run on the device: uint8 -> normalized float, flip, resize.

Datasets yield uint8 so that worker processes and host-to-device copies move a quarter
of the bytes; the conversion happens here, after the copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def to_model_input(
    batch_uint8: Tensor,
    device: torch.device | str,
    *,
    flip_mask: Tensor | None = None,
    channels_last: bool = False,
    size: tuple[int, int] | None = None,
) -> Tensor:
    """uint8 `(B, 3, H, W)` in [0, 255] -> float32 `(B, 3, H', W')` on `device` in [-1, 1].

    Normalizes as (x / 255 - 0.5) / 0.5; flips left-right the samples where `flip_mask`
    (bool `(B,)`) is True; resizes bilinearly (align_corners=False, antialiased when
    shrinking) to `size = (height, width)` in pixels when given and different; returns a
    channels_last tensor when asked. The host-to-device copy is non-blocking (it overlaps
    with compute when the batch is in pinned memory).
    """
    if batch_uint8.dtype != torch.uint8 or batch_uint8.ndim != 4:
        raise TypeError(
            f"to_model_input expects a uint8 (B, C, H, W) batch, got {batch_uint8.dtype} "
            f"with shape {tuple(batch_uint8.shape)}"
        )
    x = batch_uint8.to(device, non_blocking=True).float()
    x = x.mul_(2.0 / 255.0).sub_(1.0)  # == (x / 255 - 0.5) / 0.5
    if flip_mask is not None:
        mask = torch.as_tensor(flip_mask, dtype=torch.bool).to(x.device, non_blocking=True)
        if mask.shape != (x.shape[0],):
            raise ValueError(f"flip_mask must have shape ({x.shape[0]},), got {tuple(mask.shape)}")
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
    if size is not None:
        height, width = int(size[0]), int(size[1])
        if (height, width) != tuple(x.shape[-2:]):
            shrink = height < x.shape[-2] or width < x.shape[-1]
            x = F.interpolate(
                x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink
            )
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def random_flip_mask(
    batch_size: int, generator: torch.Generator | None = None, p: float = 0.5
) -> Tensor:
    """Bool `(batch_size,)` on the CPU, each entry True with probability `p` (from `generator`)."""
    return torch.rand(batch_size, generator=generator) < p
