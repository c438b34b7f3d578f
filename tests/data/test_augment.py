"""`data.augment`: torchvision-style augmentation in plain torch, per sample in the loader's
workers, seeded per (seed, epoch, index); off by default."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from eqmcli.data.augment import (
    AugmentedDataset,
    augment_image,
    color_jitter,
    crop_box,
    gaussian_blur,
    grayscale,
    hsv_to_rgb,
    random_grayscale,
    random_resized_crop,
    rgb_to_hsv,
)
from eqmcli.data.loader import make_loader
from eqmcli.distributed import init_distributed
from eqmcli.errors import UserError
from eqmcli.run.recipe import (
    AugmentSection,
    ColorJitter,
    GaussianBlur,
    RandomResizedCrop,
    load_recipe,
)
from eqmcli.run.rundir import RunPaths
from eqmcli.train.sampler import EpochSampler
from eqmcli.train.setup import set_up, start

ALL_FOUR = [
    "data.augment.random_resized_crop.scale=[0.5,1.0]",
    "data.augment.color_jitter.brightness=0.4", "data.augment.color_jitter.contrast=0.4",
    "data.augment.color_jitter.saturation=0.4", "data.augment.color_jitter.hue=0.1",
    "data.augment.random_grayscale.p=0.5",
    "data.augment.gaussian_blur.kernel_size=5",
]


def image(seed: int = 0, size: tuple[int, int] = (12, 10)) -> torch.Tensor:
    return torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def first_batches(recipe, tmp_path, count: int = 2) -> list[torch.Tensor]:
    """The first `count` image batches of epoch 0 as `eqm train` loads them."""
    context, device = init_distributed("cpu", "ddp")
    run = set_up(recipe, RunPaths(tmp_path / "unused"), context, device)
    start(run)
    run.sampler.set_epoch(0)
    batches = []
    for images, _ in run.loader:
        batches.append(images)
        if len(batches) == count:
            break
    run.loader.close()
    return batches


# ------------------------------------------------------------------ the run's loader
def test_off_by_default_the_batches_are_todays(tiny_recipe_path, tmp_path):
    recipe = load_recipe(tiny_recipe_path)
    assert not recipe.data.augment.enabled
    loaded = first_batches(recipe, tmp_path)
    # today's pipeline, built directly: the dataset itself under the epoch sampler
    context, device = init_distributed("cpu", "ddp")
    run = set_up(recipe, RunPaths(tmp_path / "unused"), context, device)
    plain = make_loader(run.data.dataset, batch_size=16, num_workers=0, drop_last=True,
                        sampler=EpochSampler(len(run.data.dataset), recipe.seed, batch_size=16))
    expected = [images for images, _ in list(plain)[:2]]
    assert all(torch.equal(a, b) for a, b in zip(loaded, expected, strict=True))


def test_on_the_images_change_and_repeat_under_the_seed(tiny_recipe_path, tmp_path):
    plain = first_batches(load_recipe(tiny_recipe_path), tmp_path)
    on = load_recipe(tiny_recipe_path, ALL_FOUR)
    first, again = first_batches(on, tmp_path), first_batches(on, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True)), "deterministic"
    assert all(not torch.equal(a, b) for a, b in zip(first, plain, strict=True))
    other_seed = first_batches(load_recipe(tiny_recipe_path, [*ALL_FOUR, "seed=4"]), tmp_path)
    assert not torch.equal(other_seed[0], first[0])


def test_workers_draw_what_the_main_process_draws(tiny_recipe_path, tmp_path):
    on = load_recipe(tiny_recipe_path, ALL_FOUR)
    in_worker = first_batches(load_recipe(tiny_recipe_path, [*ALL_FOUR, "data.num_workers=1"]),
                              tmp_path)
    assert all(torch.equal(a, b)
               for a, b in zip(first_batches(on, tmp_path), in_worker, strict=True))


def test_each_epoch_draws_anew_and_the_run_records_the_section(
    tiny_recipe_path, tmp_path, train_tiny
):
    recipe = load_recipe(tiny_recipe_path, ALL_FOUR)
    context, device = init_distributed("cpu", "ddp")
    data = set_up(recipe, RunPaths(tmp_path / "unused"), context, device).data
    dataset = AugmentedDataset(data.dataset, recipe.data.augment, recipe.seed, data.image_size)
    assert torch.equal(dataset[0, 3][0], dataset[0, 3][0])
    assert not torch.equal(dataset[0, 3][0], dataset[1, 3][0])
    assert dataset[0, 3][1] == data.dataset[3][1]
    out = train_tiny(*ALL_FOUR, "eval.every_epochs=0")
    stored = yaml.safe_load((out / "recipe.yaml").read_text())["data"]["augment"]
    assert stored["color_jitter"]["hue"] == 0.1 and stored["gaussian_blur"]["kernel_size"] == 5
    assert stored["random_resized_crop"]["scale"] == [0.5, 1.0]


def test_an_augmented_run_resumes_exactly(straight_and_resumed):
    a, b = straight_and_resumed([*ALL_FOUR, "eval.every_epochs=0", "optim.schedule=constant",
                                 "optim.warmup_epochs=0", "train.precision=fp32"])
    assert all(torch.equal(a["backbone"][k], b["backbone"][k]) for k in a["backbone"])
    assert torch.equal(a["head"]["weight"], b["head"]["weight"])


def test_bad_augment_settings_are_one_sentence(tiny_recipe_path):
    for override, named in [
        ("data.augment.gaussian_blur.kernel_size=4", "kernel_size must be odd"),
        ("data.augment.random_resized_crop.scale=[0.5,2]", "scale must be"),
        ("data.augment.color_jitter.hue=0.6", "hue"),
        ("data.augment.random_grayscale.probability=1", "valid keys: p"),
    ]:
        with pytest.raises(UserError, match=named):
            load_recipe(tiny_recipe_path, [override])
    settings = AugmentSection(gaussian_blur=GaussianBlur(kernel_size=51))
    with pytest.raises(UserError, match="kernel_size 51x51 is too large for 24x24"):
        AugmentedDataset([], settings, 0, (24, 24))


# ----------------------------------------------------------------- the transforms
def test_random_resized_crop_follows_scale_and_ratio():
    settings = RandomResizedCrop(scale=(0.25, 0.5), ratio=(0.5, 2.0))
    generator = gen()
    for _ in range(200):
        top, left, h, w = crop_box(40, 60, settings, generator)
        assert top >= 0 and top + h <= 40 and left >= 0 and left + w <= 60
        # rounding h and w to whole pixels moves area and ratio a little
        assert 0.25 * 0.85 <= h * w / 2400 <= 0.5 * 1.15 and 0.5 * 0.85 <= w / h <= 2.0 * 1.15
    whole = RandomResizedCrop(scale=(1.0, 1.0), ratio=(60 / 40, 60 / 40))
    x = image(size=(40, 60))
    assert torch.equal(random_resized_crop(x, whole, gen()), x), "the whole image is unchanged"
    # a ratio the image cannot hold: torchvision's fallback, the largest central crop
    assert crop_box(40, 60, RandomResizedCrop(scale=(1.0, 1.0), ratio=(4.0, 4.0)), gen()) == (
        (40 - 15) // 2, 0, 15, 60)
    zoomed = random_resized_crop(x, settings, gen())
    assert zoomed.shape == x.shape and not torch.equal(zoomed, x)


def one_factor(out: torch.Tensor, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The factors f with out = f·x + (1 − f)·other, over pixels the clamp left alone."""
    other = other.expand_as(x)
    usable = ((x - other).abs() > 0.05) & (out > 0.001) & (out < 0.999)
    return ((out - other) / (x - other))[usable]


def test_colour_adjustments_follow_their_definitions():
    x = image()
    luma = 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    assert torch.allclose(grayscale(x)[0], luma)
    grey = random_grayscale(x, 1.0, gen())
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert torch.equal(random_grayscale(x, 0.0, gen()), x)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x)  # round trip
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    hsv = rgb_to_hsv(red)
    hsv[0] = (hsv[0] + 1 / 3) % 1.0  # a third of a turn: red -> green
    torch.testing.assert_close(hsv_to_rgb(hsv).flatten(), torch.tensor([0.0, 1.0, 0.0]))
    for seed in range(5):
        # brightness: one factor in [0.6, 1.4] times the image; contrast: blended with the
        # mean luma; saturation: blended with each pixel's luma (factors in [0.6, 1.4])
        for settings, other in [
            (ColorJitter(brightness=0.4), torch.zeros(())),
            (ColorJitter(contrast=0.4), luma.mean()),
            (ColorJitter(saturation=0.4), luma),
        ]:
            factors = one_factor(color_jitter(x, settings, gen(seed)), x, other)
            assert factors.numel() > 100 and factors.std() < 1e-4
            assert 0.6 <= factors.mean() <= 1.4
        # hue: every pixel's hue turns by one shift in [-0.1, 0.1]; saturation, value stay
        before, after = rgb_to_hsv(x), rgb_to_hsv(color_jitter(x, ColorJitter(hue=0.1), gen(seed)))
        torch.testing.assert_close(after[1:], before[1:], atol=1e-5, rtol=0)
        turn = torch.remainder(after[0] - before[0] + 0.5, 1.0) - 0.5
        assert turn.std() < 1e-4 and turn.abs().max() <= 0.1 + 1e-5
    assert torch.equal(color_jitter(x, ColorJitter(), gen()), x), "all zero: unchanged"


def test_gaussian_blur_keeps_constants_and_spreads_a_point():
    settings = GaussianBlur(kernel_size=5, sigma=(1.0, 1.0))
    constant = torch.full((3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, settings, gen()), constant)
    point = torch.zeros(3, 9, 9)
    point[:, 4, 4] = 1.0
    blurred = gaussian_blur(point, settings, gen())
    assert blurred.sum().item() == pytest.approx(3.0, rel=1e-5)  # the kernel sums to 1
    # neighbours in the ratio of the Gaussian's taps: w(1) / w(0) = exp(−1/2) for sigma 1
    assert (blurred[0, 4, 5] / blurred[0, 4, 4]).item() == pytest.approx(math.exp(-0.5), rel=1e-5)
    wide = gaussian_blur(point, GaussianBlur(kernel_size=[5, 1], sigma=(1.0, 1.0)), gen())
    assert wide[0, 4].gt(0).sum() == 5 and wide[0, :, 4].gt(0).sum() == 1, "[width, height]"


def test_augment_image_is_uint8_in_uint8_out_and_deterministic():
    settings = load_recipe_section(ALL_FOUR)
    x = (image(size=(24, 24)) * 255).to(torch.uint8)
    a, b = augment_image(x, settings, gen(5)), augment_image(x, settings, gen(5))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(augment_image(x, AugmentSection(), gen()), x), "nothing on: unchanged"


def load_recipe_section(overrides: list[str]) -> AugmentSection:
    from eqmcli.run.recipe import apply_overrides, recipe_from_mapping

    return recipe_from_mapping(apply_overrides({}, overrides)).data.augment
