"""`tiny`: a small CNN for fast CPU experiments at 24-128 px.

Four stride-2 stages of 32/64/128/256 channels, each Conv3x3 -> BN -> PReLU (a leaky
ReLU in the stem), plus one residual Conv3x3 unit at 1/8 resolution where it is cheap;
then a GDC-style head: a depthwise conv whose kernel covers the whole final map
(position-aware, few parameters), BN, Linear to the embedding and BN1d. A 48x48 input
ends as a 3x3x256 map. About 0.7M parameters and 14M multiply-adds per 48x48 image.
"""

from __future__ import annotations

import torch
from torch import nn

from eqmcli.backbones._common import check_input_size, conv_bn_prelu, downsampled, init_weights

TINY_WIDTHS = (32, 64, 128, 256)
TINY_MIN_SIZE, TINY_MAX_SIZE = 24, 128


class _Residual(nn.Module):
    """x + BN(Conv3x3(x)), followed by PReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn(self.conv(x)))


class TinyNet(nn.Module):
    """Small CPU-friendly net: float (B, 3, H, W), 24 <= H, W <= 128 px -> (B, embedding_dim)."""

    def __init__(
        self,
        *,
        embedding_dim: int = 512,
        input_size: tuple[int, int] = (48, 48),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        height, width = check_input_size(
            "tiny", input_size, minimum=TINY_MIN_SIZE, maximum=TINY_MAX_SIZE
        )
        self.embedding_dim = embedding_dim
        self.input_size = (height, width)
        w1, w2, w3, w4 = TINY_WIDTHS
        # The stem's output is the largest activation; PReLU's backward pass on it costs
        # ~6x a fixed-slope leaky ReLU on CPU, so the stem uses the latter.
        stem = nn.Sequential(
            nn.Conv2d(3, w1, 3, 2, 1, bias=False),
            nn.BatchNorm2d(w1),
            nn.LeakyReLU(0.1, inplace=True),
        )
        self.features = nn.Sequential(
            stem,
            conv_bn_prelu(w1, w2, 3, 2),
            conv_bn_prelu(w2, w3, 3, 2),
            _Residual(w3),
            conv_bn_prelu(w3, w4, 3, 2),
        )
        kernel = (downsampled(height, 4), downsampled(width, 4))
        self.gdc = nn.Sequential(
            nn.Conv2d(w4, w4, kernel, groups=w4, bias=False), nn.BatchNorm2d(w4)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(w4, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.gdc(self.features(x)), 1)
        return self.bn(self.linear(self.dropout(x)))
