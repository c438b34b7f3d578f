"""SphereFace residual CNNs (Liu et al., "SphereFace", CVPR 2017, Table 2).

Four stages of 64/128/256/512 channels. Each stage opens with a stride-2 Conv3x3 +
PReLU and continues with residual units of two Conv3x3 + PReLU layers. Units per stage:
20 layers = (1, 2, 4, 1), 64 layers = (3, 8, 16, 3); the layer count is the number of
convolutions (4 + 2 * units). The paper's input is a 112x96 crop, giving a 7x6x512 map
that a fully connected layer turns into the embedding.

Deviation from the 2017 Caffe models: a BatchNorm follows every conv (and a BN1d the
embedding), as in later re-implementations, so the nets train reliably with large
learning rates and any of this package's losses.
"""

from __future__ import annotations

import torch
from torch import nn

from eqmcli.backbones._common import (
    FlattenFC,
    check_input_size,
    conv_bn_prelu,
    downsampled,
    init_weights,
)

SPHERE_UNITS: dict[int, tuple[int, int, int, int]] = {20: (1, 2, 4, 1), 64: (3, 8, 16, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)


class SphereUnit(nn.Module):
    """x + PReLU(BN(Conv3x3(PReLU(BN(Conv3x3(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_prelu(channels, channels), conv_bn_prelu(channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SphereNet(nn.Module):
    """SphereFace-`depth`: float (B, 3, H, W) -> raw embedding (B, embedding_dim).

    Default input 112x96 (H x W) px; any H, W >= 16 works (FC input 512*ceil(H/16)*ceil(W/16)).
    """

    def __init__(
        self,
        depth: int = 20,
        *,
        embedding_dim: int = 512,
        input_size: tuple[int, int] = (112, 96),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth not in SPHERE_UNITS:
            raise ValueError(f"no SphereNet of depth {depth}; choose one of {sorted(SPHERE_UNITS)}")
        height, width = check_input_size(f"sphere{depth}", input_size, minimum=16)
        self.embedding_dim = embedding_dim
        self.input_size = (height, width)
        stages: list[nn.Module] = []
        in_ch = 3
        for units, width_ in zip(SPHERE_UNITS[depth], STAGE_WIDTHS, strict=True):
            layers = [conv_bn_prelu(in_ch, width_, 3, stride=2)]
            layers += [SphereUnit(width_) for _ in range(units)]
            stages.append(nn.Sequential(*layers))
            in_ch = width_
        self.stages = nn.Sequential(*stages)
        spatial = (downsampled(height, 4), downsampled(width, 4))
        self.head = FlattenFC(in_ch, spatial, embedding_dim, dropout=dropout, input_bn=False)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x))
