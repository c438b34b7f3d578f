"""MobileFaceNet (Chen et al., "MobileFaceNets", CCBR 2018, Table 1).

Stem Conv3x3/2 (64) and a depthwise Conv3x3 (64), then inverted-residual bottlenecks
(1x1 expand by t -> depthwise 3x3 with stride s -> linear 1x1 project; identity
shortcut when the shape is kept), PReLU throughout. A 1x1 conv to 512 channels feeds
the global depthwise conv (GDC): a linear depthwise conv whose kernel covers the whole
final map (7x7 at 112 px), then a linear 1x1 conv (here a Linear) to the embedding and BN.
The paper uses a 128-d embedding; here the size is configurable (default 512).
"""

from __future__ import annotations

import torch
from torch import nn

from eqmcli.backbones._common import check_input_size, conv_bn_prelu, downsampled, init_weights

#: (expansion t, output channels c, repeats n, first stride s), Table 1 of the paper
BOTTLENECK_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise 3x3 (stride) -> linear 1x1 project."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.body = nn.Sequential(
            conv_bn_prelu(in_ch, hidden, 1),
            conv_bn_prelu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet: float (B, 3, H, W) -> raw embedding (B, embedding_dim).

    Default 112x112 px; any H, W >= 16 works (the GDC kernel is ceil(H/16) x ceil(W/16)).
    """

    def __init__(
        self,
        *,
        embedding_dim: int = 512,
        input_size: tuple[int, int] = (112, 112),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        height, width = check_input_size("mobilefacenet", input_size, minimum=16)
        self.embedding_dim = embedding_dim
        self.input_size = (height, width)
        layers: list[nn.Module] = [conv_bn_prelu(3, 64, 3, 2), conv_bn_prelu(64, 64, 3, groups=64)]
        in_ch = 64
        for expansion, out_ch, repeats, stride in BOTTLENECK_SETTINGS:
            for i in range(repeats):
                layers.append(Bottleneck(in_ch, out_ch, stride if i == 0 else 1, expansion))
                in_ch = out_ch
        layers.append(conv_bn_prelu(in_ch, 512, 1))
        self.features = nn.Sequential(*layers)
        kernel = (downsampled(height, 4), downsampled(width, 4))
        self.gdc = nn.Sequential(
            nn.Conv2d(512, 512, kernel, groups=512, bias=False), nn.BatchNorm2d(512)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(512, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.gdc(self.features(x)), 1)
        return self.bn(self.linear(self.dropout(x)))
