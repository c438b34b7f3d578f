"""Helpers of the model interop tests: minimal stand-ins for InsightFace arcface_torch
backbones, written from the published description (parameter names and architecture; no
code copied), a writer of random test images and an imported MobileFaceNet run.

Only what the import needs is modelled: the module tree (hence the ``state_dict`` names)
and the forward computation in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tiny_runs import run_eqm
from torch import nn


# ----------------------------------------------------------------------------- iresnet
class ArcIBasicBlock(nn.Module):
    """bn1 -> conv1 (3x3) -> bn2 -> prelu -> conv2 (3x3, stride) -> bn3, plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.downsample is None else self.downsample(x))


class ArcIResNet(nn.Module):
    """conv1/bn1/prelu, layer1..4 (first unit stride 2), bn2, flatten, dropout, fc, features."""

    def __init__(self, layers: tuple[int, int, int, int], num_features: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for index, (units, cout) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
            blocks = [ArcIBasicBlock(cin, cout, 2)]
            blocks += [ArcIBasicBlock(cout, cout, 1) for _ in range(units - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
            cin = cout
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


# ------------------------------------------------------------------------ mobilefacenet
class ArcConvBlock(nn.Module):
    """layers = conv (no bias) -> BN -> PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ArcLinearBlock(nn.Module):
    """layers = conv (no bias) -> BN, no activation."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, 1, 0, groups=groups, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ArcDepthWise(nn.Module):
    """1x1 ConvBlock to ``hidden`` -> depthwise 3x3 ConvBlock (stride) -> 1x1 LinearBlock."""

    def __init__(self, cin: int, cout: int, hidden: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ArcConvBlock(cin, hidden),
            ArcConvBlock(hidden, hidden, 3, stride, 1, groups=hidden),
            ArcLinearBlock(hidden, cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class ArcResidual(nn.Module):
    def __init__(self, channels: int, blocks: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[ArcDepthWise(channels, channels, hidden, 1, True) for _ in range(blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ArcGDC(nn.Module):
    """layers = depthwise 7x7 LinearBlock, flatten, Linear (no bias), BatchNorm1d."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ArcLinearBlock(512, 512, 7, groups=512),
            nn.Flatten(),
            nn.Linear(512, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ArcMobileFaceNet(nn.Module):
    """arcface_torch's ``mbf``: width scale 2, blocks (1, 4, 6, 2)."""

    def __init__(self, num_features: int = 512) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            ArcConvBlock(3, 128, 3, 2, 1),
            ArcConvBlock(128, 128, 3, 1, 1, groups=64),
            ArcDepthWise(128, 128, 128, 2, False),
            ArcResidual(128, 4, 128),
            ArcDepthWise(128, 256, 256, 2, False),
            ArcResidual(256, 6, 256),
            ArcDepthWise(256, 256, 512, 2, False),
            ArcResidual(256, 2, 256),
        ])
        self.conv_sep = ArcConvBlock(256, 512)
        self.features = ArcGDC(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, random BN affine parameters and BN statistics measured on random
    images (so activations keep their scale and a mis-mapped tensor shows); eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("bias"):
                tensor.copy_(0.1 * noise)
            elif tensor.ndim == 1:  # BN scale, PReLU slope
                tensor.copy_(0.5 + 0.2 * noise)
            else:
                tensor.copy_(noise * (2.0 / tensor[0].numel()) ** 0.5)
        norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the calibration batches
        module.train()
        for _ in range(2):
            module(torch.randn(8, 3, 112, 112, generator=generator))
        for norm in norms:
            norm.momentum = 0.1
    return module.eval()


def write_images(folder: Path, count: int, size: int = 112, seed: int = 0) -> list[Path]:
    """``count`` random RGB PNGs (lossless: the test's pixels are the model's) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"img_{index}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def import_mbf_run(folder: Path) -> Path:
    """An imported 112 px arcface_torch MobileFaceNet run (random weights, calibrated BN)."""
    torch.save(randomized(ArcMobileFaceNet()).state_dict(), folder / "mbf.pth")
    run = folder / "mbf_run"
    result = run_eqm("import", "insightface", folder / "mbf.pth", "--arch", "mbf", "--out", run)
    assert result.exit_code == 0, result.output
    return run
