"""MobileFaceNet (Chen et al., "MobileFaceNets", CCBR 2018, Table 1) and its 2x-wide variant.

Stem Conv3x3/2 and a grouped Conv3x3, then inverted-residual bottlenecks (1x1 expand ->
depthwise 3x3 with stride s -> linear 1x1 project; identity shortcut when the shape is
kept), PReLU throughout. A 1x1 conv to 512 channels feeds the global depthwise conv (GDC):
a linear depthwise conv whose kernel covers the whole final map (7x7 at 112 px), then a
linear 1x1 conv (here a Linear) to the embedding and BN. The paper uses a 128-d embedding;
here the size is configurable (default 512).

Two layouts share the code (and the parameter names):

- ``PAPER_LAYOUT`` (backbone ``mobilefacenet``): Table 1 of the paper, 64-channel stem,
  bottleneck widths 64/128 with expansion factors 2 and 4.
- ``ARCFACE_MBF_LAYOUT`` (backbone ``mbf``): the MobileFaceNet of InsightFace's
  ``arcface_torch`` (``get_mbf``, width ``scale=2``): every output width doubled (128-channel
  stem, bottleneck outputs 128/256) while the expanded widths stay 128/256/512, and the
  second stem conv keeps 64 groups (2 channels per group), so its weights load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

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
GDC_CHANNELS = 512
Unit = tuple[int, int, int, int]  # (in, hidden, out) channels and stride of one bottleneck


@dataclass(frozen=True)
class MobileFaceNetLayout:
    """Channel plan: ``stem`` channels (both stem convs), ``stem_groups`` of the second one,
    and one ``(in, hidden, out, stride)`` tuple per bottleneck unit, in order."""

    stem: int
    stem_groups: int
    units: tuple[Unit, ...]


def _paper_units() -> tuple[Unit, ...]:
    units: list[Unit] = []
    in_ch = 64
    for expansion, out_ch, repeats, stride in BOTTLENECK_SETTINGS:
        for i in range(repeats):
            units.append((in_ch, in_ch * expansion, out_ch, stride if i == 0 else 1))
            in_ch = out_ch
    return tuple(units)


def _arcface_mbf_units(blocks: tuple[int, int, int] = (4, 6, 2)) -> tuple[Unit, ...]:
    """arcface_torch ``get_mbf`` (scale 2, blocks (1, 4, 6, 2)): stride-2 unit + residual units."""
    # (in, hidden, out) of each stage's stride-2 unit, and the hidden width of its residual units
    plan = ((128, 128, 128, 128), (128, 256, 256, 256), (256, 512, 256, 256))
    units: list[Unit] = []
    for (in_ch, hidden, out_ch, r_hidden), repeats in zip(plan, blocks, strict=True):
        units.append((in_ch, hidden, out_ch, 2))
        units += [(out_ch, r_hidden, out_ch, 1)] * repeats
    return tuple(units)


PAPER_LAYOUT = MobileFaceNetLayout(stem=64, stem_groups=64, units=_paper_units())
ARCFACE_MBF_LAYOUT = MobileFaceNetLayout(stem=128, stem_groups=64, units=_arcface_mbf_units())


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand to ``hidden`` -> depthwise 3x3 (stride) -> linear 1x1."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, hidden: int) -> None:
        super().__init__()
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
        layout: MobileFaceNetLayout = PAPER_LAYOUT,
        name: str = "mobilefacenet",
    ) -> None:
        super().__init__()
        height, width = check_input_size(name, input_size, minimum=16)
        self.embedding_dim = embedding_dim
        self.input_size = (height, width)
        stem = layout.stem
        layers: list[nn.Module] = [
            conv_bn_prelu(3, stem, 3, 2),
            conv_bn_prelu(stem, stem, 3, groups=layout.stem_groups),
        ]
        in_ch = stem
        for unit_in, hidden, out_ch, stride in layout.units:
            layers.append(Bottleneck(unit_in, out_ch, stride, hidden))
            in_ch = out_ch
        layers.append(conv_bn_prelu(in_ch, GDC_CHANNELS, 1))
        self.features = nn.Sequential(*layers)
        kernel = (downsampled(height, 4), downsampled(width, 4))
        self.gdc = nn.Sequential(
            nn.Conv2d(GDC_CHANNELS, GDC_CHANNELS, kernel, groups=GDC_CHANNELS, bias=False),
            nn.BatchNorm2d(GDC_CHANNELS),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(GDC_CHANNELS, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.gdc(self.features(x)), 1)
        return self.bn(self.linear(self.dropout(x)))
