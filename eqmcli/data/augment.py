"""Training-time augmentation, one image at a time in the loader's workers (`data.augment`).

Four transforms written with plain torch ops, each following the parameter names and
meanings of its torchvision namesake (torchvision itself is not a dependency):
`random_resized_crop` (RandomResizedCrop), `color_jitter` (ColorJitter), `random_grayscale`
(RandomGrayscale) and `gaussian_blur` (GaussianBlur), applied in that order. They take a
float image `(3, H, W)` with values in [0, 1] and a `torch.Generator` that makes every draw;
`AugmentedDataset` seeds one generator per sample from (recipe seed, epoch, index), so a
run's augmented images do not depend on the number of workers and repeat exactly on a
resume, while every epoch sees new draws.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from eqmcli.errors import UserError
from eqmcli.run.recipe import AugmentSection, ColorJitter, GaussianBlur, RandomResizedCrop
from eqmcli.seeds import seeded_generator

#: torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma)
LUMA = (0.2989, 0.587, 0.114)


def uniform(low: float, high: float, generator: torch.Generator) -> float:
    """One draw from U[low, high)."""
    return low + (high - low) * float(torch.rand((), generator=generator))


def integer(low: int, high: int, generator: torch.Generator) -> int:
    """One draw from {low, ..., high - 1}."""
    return int(torch.randint(low, high, (), generator=generator))


# ------------------------------------------------------------------ random resized crop
def crop_box(
    height: int, width: int, settings: RandomResizedCrop, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop, as torchvision's RandomResizedCrop.get_params: up
    to 10 tries of an area fraction from `scale` and an aspect ratio (width/height) drawn
    log-uniformly from `ratio`; else the largest central crop within `ratio`."""
    area = height * width
    log_low, log_high = math.log(settings.ratio[0]), math.log(settings.ratio[1])
    for _ in range(10):
        target = area * uniform(*settings.scale, generator)
        aspect = math.exp(uniform(log_low, log_high, generator))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return integer(0, height - h + 1, generator), integer(0, width - w + 1, generator), h, w
    in_ratio = width / height
    if in_ratio < settings.ratio[0]:
        w, h = width, int(round(width / settings.ratio[0]))
    elif in_ratio > settings.ratio[1]:
        h, w = height, int(round(height * settings.ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    image: Tensor, settings: RandomResizedCrop, generator: torch.Generator
) -> Tensor:
    """A random crop (`crop_box`) resized back to the image's size (bilinear, antialiased)."""
    height, width = image.shape[-2:]
    top, left, h, w = crop_box(height, width, settings, generator)
    crop = image[:, top : top + h, left : left + w]
    if (h, w) == (height, width):
        return crop
    resized = F.interpolate(crop[None], size=(height, width), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    return resized.clamp_(0.0, 1.0)


# ------------------------------------------------------------------------- colour
def grayscale(image: Tensor) -> Tensor:
    """Luma (1, H, W) of an RGB image (3, H, W)."""
    r, g, b = image
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(0)


def blend(image: Tensor, other: Tensor, factor: float) -> Tensor:
    """factor·image + (1 − factor)·other, clamped to [0, 1] (torchvision's _blend)."""
    return (factor * image + (1.0 - factor) * other).clamp_(0.0, 1.0)


def rgb_to_hsv(image: Tensor) -> Tensor:
    """(3, H, W) RGB in [0, 1] -> HSV, hue in [0, 1) (a full turn is 1)."""
    r, g, b = image
    value, _ = image.max(0)
    low, _ = image.min(0)
    delta = value - low
    saturation = delta / torch.where(value > 0, value, torch.ones_like(value))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (value - r) / safe, (value - g) / safe, (value - b) / safe
    hue = torch.where(value == r, bc - gc, torch.where(value == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, torch.remainder(hue / 6.0, 1.0), torch.zeros_like(hue))
    return torch.stack([hue, saturation, value])


def hsv_to_rgb(image: Tensor) -> Tensor:
    """(3, H, W) HSV (hue in [0, 1)) -> RGB: channel c is v − v·s·clamp(min(k, 4 − k), 0, 1)
    with k = (n_c + 6·hue) mod 6 and n = (5, 3, 1) for red, green, blue."""
    hue, saturation, value = image
    offsets = torch.tensor([5.0, 3.0, 1.0], device=image.device).view(3, 1, 1)
    k = torch.remainder(offsets + 6.0 * hue, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return value - (value * saturation) * ramp


def adjust_hue(image: Tensor, shift: float) -> Tensor:
    """Rotate the hue by `shift` turns (torchvision's hue_factor, in [−0.5, 0.5])."""
    hsv = rgb_to_hsv(image)
    hsv[0] = torch.remainder(hsv[0] + shift, 1.0)
    return hsv_to_rgb(hsv)


def color_jitter(image: Tensor, settings: ColorJitter, generator: torch.Generator) -> Tensor:
    """torchvision's ColorJitter: the four adjustments in a random order, each factor drawn
    uniformly from [max(0, 1 − x), 1 + x] (brightness, contrast, saturation) or [−hue, hue];
    a parameter of 0 leaves its adjustment out."""
    order = torch.randperm(4, generator=generator).tolist()
    spans = (settings.brightness, settings.contrast, settings.saturation)
    factors = [uniform(max(0.0, 1.0 - x), 1.0 + x, generator) if x > 0 else None for x in spans]
    hue = uniform(-settings.hue, settings.hue, generator) if settings.hue > 0 else None
    for which in order:
        if which == 0 and factors[0] is not None:
            image = (image * factors[0]).clamp_(0.0, 1.0)
        elif which == 1 and factors[1] is not None:
            image = blend(image, grayscale(image).mean(), factors[1])
        elif which == 2 and factors[2] is not None:
            image = blend(image, grayscale(image), factors[2])
        elif which == 3 and hue is not None:
            image = adjust_hue(image, hue)
    return image


def random_grayscale(image: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """torchvision's RandomGrayscale: with probability `p`, the luma in all three channels."""
    if float(torch.rand((), generator=generator)) < p:
        return grayscale(image).expand_as(image).clone()
    return image


# --------------------------------------------------------------------------- blur
def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """A normalized 1-D Gaussian of `size` taps (odd), standard deviation `sigma` pixels."""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def gaussian_blur(image: Tensor, settings: GaussianBlur, generator: torch.Generator) -> Tensor:
    """torchvision's GaussianBlur: sigma drawn uniformly from `sigma` (pixels), one separable
    kernel of `kernel_size` = (width, height) taps, reflected borders."""
    sigma = uniform(*settings.sigma, generator)
    width_taps, height_taps = settings.taps()
    channels = image.shape[0]
    horizontal = gaussian_kernel(width_taps, sigma).view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = gaussian_kernel(height_taps, sigma).view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    padded = F.pad(image[None], (width_taps // 2, width_taps // 2,
                                 height_taps // 2, height_taps // 2), mode="reflect")
    blurred = F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)
    return blurred[0]


# ------------------------------------------------------------------------ pipeline
def augment_image(image: Tensor, settings: AugmentSection, generator: torch.Generator) -> Tensor:
    """uint8 (3, H, W) -> uint8 (3, H, W): crop, colour jitter, grayscale, blur (those set)."""
    x = image.float().div_(255.0)
    if settings.random_resized_crop is not None:
        x = random_resized_crop(x, settings.random_resized_crop, generator)
    if settings.color_jitter is not None:
        x = color_jitter(x, settings.color_jitter, generator)
    if settings.random_grayscale is not None:
        x = random_grayscale(x, settings.random_grayscale.p, generator)
    if settings.gaussian_blur is not None:
        x = gaussian_blur(x, settings.gaussian_blur, generator)
    return x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


class AugmentedDataset(Dataset):
    """A training set whose items are augmented (`data.augment`) in the loader's workers.

    Keys are `(epoch, index)` pairs (`EpochSampler(tag_epoch=True)`); the generator of a
    sample is seeded from (seed, epoch, index), so the draws depend on nothing else.
    """

    def __init__(self, dataset: Dataset, settings: AugmentSection, seed: int,
                 image_size: tuple[int, int]) -> None:
        blur = settings.gaussian_blur
        if blur is not None:
            width_taps, height_taps = blur.taps()
            if width_taps // 2 >= image_size[1] or height_taps // 2 >= image_size[0]:
                raise UserError(
                    f"data.augment.gaussian_blur.kernel_size {width_taps}x{height_taps} is "
                    f"too large for {image_size[0]}x{image_size[1]} images (at most "
                    f"{2 * min(image_size) - 1} taps)"
                )
        self.dataset, self.settings, self.seed = dataset, settings, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Any]:
        epoch, index = key
        image, label = self.dataset[index]
        stream = (self.seed * 1_000_033 + epoch) * len(self) + index
        return augment_image(image, self.settings, seeded_generator(stream)), label
