"""Improved ResNet ("IResNet") as used with ArcFace (Deng et al., CVPR 2019, Sec. 3.2).

Residual unit: BN -> Conv3x3 -> BN -> PReLU -> Conv3x3(stride) -> BN, added to the
shortcut (identity, or Conv1x1(stride) -> BN when the shape changes). The stem is a
stride-1 Conv3x3(64) -> BN -> PReLU; four stages of 64/128/256/512 channels each halve
the resolution in their first unit, so a 112x112 crop ends as a 7x7x512 map. The output
"E" structure is BN2d -> Dropout -> FC -> BN1d, giving the raw embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from eqmcli.backbones._common import FlattenFC, check_input_size, downsampled, init_weights

#: units per stage for each depth (ArcFace paper / InsightFace model zoo)
IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)


class IResidualUnit(nn.Module):
    """BN-Conv-BN-PReLU-Conv-BN unit; the stride sits in the second conv."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.PReLU(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class IResNet(nn.Module):
    """IResNet-`depth`: float (B, 3, H, W) -> raw embedding (B, embedding_dim).

    Any H, W >= 16 px works; the FC input is 512 * ceil(H/16) * ceil(W/16) (7x7 at 112 px).
    """

    def __init__(
        self,
        depth: int = 50,
        *,
        embedding_dim: int = 512,
        input_size: tuple[int, int] = (112, 112),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth not in IRESNET_LAYERS:
            raise ValueError(f"no IResNet of depth {depth}; choose one of {sorted(IRESNET_LAYERS)}")
        height, width = check_input_size(f"iresnet{depth}", input_size, minimum=16)
        self.embedding_dim = embedding_dim
        self.input_size = (height, width)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        stages: list[nn.Module] = []
        in_ch = 64
        for units, width_ in zip(IRESNET_LAYERS[depth], STAGE_WIDTHS, strict=True):
            blocks = [IResidualUnit(in_ch, width_, 2)]
            blocks += [IResidualUnit(width_, width_, 1) for _ in range(units - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width_
        self.stages = nn.Sequential(*stages)
        spatial = (downsampled(height, 4), downsampled(width, 4))
        self.head = FlattenFC(in_ch, spatial, embedding_dim, dropout=dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
