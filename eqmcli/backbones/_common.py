"""Building blocks shared by the backbones: size checks, initialisation, embedding heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from eqmcli.errors import UserError


def downsampled(size: int, times: int) -> int:
    """Length in pixels after `times` stride-2, kernel-3, padding-1 convs (ceil halving)."""
    for _ in range(times):
        size = (size - 1) // 2 + 1
    return size


def check_input_size(
    name: str,
    input_size: tuple[int, int],
    *,
    minimum: int,
    maximum: int | None = None,
) -> tuple[int, int]:
    """Validate a `(height, width)` pair in pixels for backbone `name`; UserError if unusable."""
    try:
        height, width = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise UserError(
            f"backbone {name!r}: input_size must be (height, width) in pixels, got {input_size!r}"
        ) from None
    if (height, width) != tuple(input_size):
        raise UserError(f"backbone {name!r}: input_size must be integers, got {input_size!r}")
    upper = f" and at most {maximum}" if maximum is not None else ""
    for value in (height, width):
        if value < minimum or (maximum is not None and value > maximum):
            raise UserError(
                f"backbone {name!r} cannot take input size {height}x{width}: "
                f"height and width must be at least {minimum}{upper} pixels"
            )
    return height, width


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs, unit/zero norms, small-normal linears; in place."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            # Normal with std 1/sqrt(fan_in): keeps the embedding's variance near the input's.
            nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class FlattenFC(nn.Module):
    """Output "E" head: BN2d -> Dropout -> flatten -> FC -> BN1d.

    Maps a feature map (B, C, h, w) to a raw embedding (B, embedding_dim). The FC sees
    every spatial position, so its input size C*h*w depends on the network's input size.
    """

    def __init__(
        self,
        channels: int,
        spatial: tuple[int, int],
        embedding_dim: int,
        *,
        dropout: float = 0.0,
        input_bn: bool = True,
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels) if input_bn else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels * spatial[0] * spatial[1], embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.bn(x))
        # flatten follows the logical (C, h, w) order, so channels_last gives the same result.
        return self.features(self.fc(torch.flatten(x, 1)))


def conv_bn_prelu(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) -> BN -> PReLU (per channel)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.PReLU(out_ch),
    )
