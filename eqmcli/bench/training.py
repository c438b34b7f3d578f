"""Training throughput (images/s) of backbone + head + optimizer step, per option set.

Each configuration is one combination of the options the trainer exposes: precision
(fp32, bf16 autocast, and fp16 autocast with a GradScaler on CUDA only), channels_last
on/off, and torch.compile of the backbone on/off. Every configuration gets its own copy of
the same initial model and optimizer (SGD, momentum 0.9, constant lr) and trains on the
same synthetic in-memory batches of random uint8 images with
`eqmcli.train.step.train_step`, the very function `eqm train` runs: conversion on the
device (normalization, random flip, channels_last), forward, loss head, backward, the
NaN/Inf flag and the optimizer step. As in training between logging steps, the head's
statistics are not collected.

Timing: after `warmup` untimed steps per configuration (compilation happens there), the
`steps` timed steps are interleaved -- each round runs one step of every configuration,
in a rotated order -- so drifting load on a shared machine hits all of them alike. A
configuration's figure is the median of its per-step times (milliseconds of wall clock;
CUDA is synchronized before and after each step), reported as images/s = batch / median,
and as a speedup ratio against the plain eager fp32 configuration of the same run (> 1
is faster). Compilation is measured on the baseline (fp32) and on bf16 + channels_last
(the trainer's CUDA default); a compile that fails on this platform becomes a skipped row
with the reason, not an error.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from eqmcli.backbones import BACKBONE_NAMES, build_backbone, default_input_size
from eqmcli.bench.timing import synchronize, timing_setup
from eqmcli.data.transforms import random_flip_mask
from eqmcli.devices import environment, resolve_device, set_training_speed
from eqmcli.errors import UserError
from eqmcli.losses import Head, build_head, canonical_name
from eqmcli.run.recipe import OptimSection
from eqmcli.train.schedule import LrSchedule
from eqmcli.train.step import StepParts, build_optimizer, compiled, place_model, train_step

#: settings used when an option is left out: (CUDA, CPU)
CUDA_DEFAULTS: dict[str, Any] = {
    "backbone": "iresnet50", "classes": 10575, "batch": 256, "steps": 20, "warmup": 5,
}
CPU_DEFAULTS: dict[str, Any] = {
    "backbone": "tiny", "classes": 1000, "batch": 64, "steps": 10, "warmup": 2,
}
BASELINE = "fp32"
#: the optimizer of every configuration: SGD, momentum 0.9, weight decay 5e-4, constant lr
BENCH_OPTIM = OptimSection(name="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4,
                           schedule="constant")


@dataclass(frozen=True)
class TrainConfig:
    """One option combination: autocast precision, memory format, compiled backbone."""

    precision: str  # "fp32", "bf16" or "fp16"
    channels_last: bool
    compile: bool

    @property
    def label(self) -> str:
        """Short name, e.g. ``fp32``, ``bf16+cl``, ``compile+bf16+cl``."""
        parts = (["compile"] if self.compile else []) + [self.precision]
        return "+".join(parts + (["cl"] if self.channels_last else []))

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: plain float32)."""
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]


def default_configs(device: torch.device, *, include_compile: bool = True) -> list[TrainConfig]:
    """The configurations worth timing on `device`, baseline (eager fp32) first.

    Eager: every precision x channels_last (fp16 only on CUDA). Compiled: fp32 and
    bf16 + channels_last -- compiling every combination multiplies the compile time
    without telling more.
    """
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    configs = [TrainConfig(p, cl, False) for p in precisions for cl in (False, True)]
    if include_compile:
        configs += [TrainConfig("fp32", False, True), TrainConfig("bf16", True, True)]
    return configs


@dataclass
class TrainRow:
    """One configuration's result. Times in milliseconds per step, throughput images/s."""

    config: str
    precision: str
    channels_last: bool
    compile: bool
    ms_per_step: float | None = None
    images_per_s: float | None = None
    speedup: float | None = None  # images/s relative to the eager fp32 baseline
    first_loss: float | None = None  # loss of the first step (same weights and batch)
    loss_finite: bool | None = None  # every step's loss was finite
    warmup_s: float | None = None  # seconds of the warm-up steps (includes compilation)
    samples: int = 0
    skipped: str | None = None  # why the configuration was not measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainBenchResult:
    """Settings, environment and one row per configuration (the baseline first)."""

    settings: dict[str, Any]
    environment: dict[str, Any]
    rows: list[TrainRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "train",
            "settings": self.settings,
            "environment": self.environment,
            "rows": [row.to_dict() for row in self.rows],
            "notes": self.notes,
            "seconds": self.seconds,
        }


class _Trainee:
    """A model copy, its optimizer and its `StepParts` for one configuration."""

    def __init__(
        self,
        config: TrainConfig,
        backbone: nn.Module,
        head: Head,
        device: torch.device,
        size: tuple[int, int],
    ) -> None:
        self.config = config
        model, loss_head = copy.deepcopy(backbone), copy.deepcopy(head)
        place_model(model, loss_head, device, channels_last=config.channels_last)
        optimizer = build_optimizer(BENCH_OPTIM, [*model.parameters(), *loss_head.parameters()])
        self.parts = StepParts(
            backbone=model, head=loss_head, optimizer=optimizer,
            schedule=LrSchedule(BENCH_OPTIM, 1, 1), device=device, amp_dtype=config.dtype,
            channels_last=config.channels_last, input_size=size,
            forward_backbone=compiled(model, config.compile),
        )
        self.steps = 0
        self.losses: list[float] = []

    def step(self, images: torch.Tensor, labels: torch.Tensor, flip: torch.Tensor) -> None:
        """One `train_step` (the function `eqm train` runs) on a uint8 host batch."""
        loss = train_step(self.parts, images, labels, flip, self.steps, collect_stats=False)
        self.steps += 1
        self.losses.append(float(loss))  # also waits for the step on CUDA


def resolve_settings(
    device: torch.device,
    *,
    backbone: str | None,
    head: str,
    classes: int | None,
    batch: int | None,
    size: int | None,
    steps: int | None,
    warmup: int | None,
) -> dict[str, Any]:
    """Fill the options left out with the device's defaults and check them (UserError)."""
    defaults = CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    backbone = backbone or defaults["backbone"]
    if backbone not in BACKBONE_NAMES:
        raise UserError(
            f"--backbone {backbone!r} is not one of {', '.join(BACKBONE_NAMES)}"
        )
    canonical_name(head)  # UserError naming an unknown loss
    settings = {
        "backbone": backbone,
        "head": head,
        "classes": classes if classes is not None else defaults["classes"],
        "batch": batch if batch is not None else defaults["batch"],
        "size": list((size, size) if size is not None else default_input_size(backbone)),
        "steps": steps if steps is not None else defaults["steps"],
        "warmup": warmup if warmup is not None else defaults["warmup"],
        "embedding_dim": 512,
        "optimizer": "sgd(momentum=0.9)",
    }
    for key, minimum in (("classes", 2), ("batch", 2), ("steps", 1), ("warmup", 0)):
        if settings[key] < minimum:
            raise UserError(f"--{key} must be >= {minimum}, got {settings[key]}")
    return settings


def benchmark_training(
    *,
    backbone: str | None = None,
    head: str = "eqm",
    classes: int | None = None,
    batch: int | None = None,
    size: int | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    device: str = "auto",
    include_compile: bool | None = None,
    configs: list[TrainConfig] | None = None,
    seed: int = 0,
    threads: int | None = None,
    clock: str = "wall",
) -> TrainBenchResult:
    """Time one training step per configuration (see the module docstring).

    Options left as None take the device's defaults (`CUDA_DEFAULTS`, `CPU_DEFAULTS`;
    `size` defaults to the backbone's design size, in pixels). fp16 needs CUDA.
    `include_compile` None: compiled configurations on CUDA only (compiling on a small
    CPU takes minutes). `threads` sets torch's CPU threads for the run; `clock="cpu"`
    times this process's CPU seconds instead of wall seconds (steadier on a busy host,
    honest with `threads=1`; CPU only).
    """
    with timing_setup(clock, threads) as timer:
        target = resolve_device(device)
        if clock != "wall" and target.type == "cuda":
            raise UserError("--clock cpu measures host CPU time; use the wall clock on CUDA")
        settings = resolve_settings(
            target, backbone=backbone, head=head, classes=classes, batch=batch, size=size,
            steps=steps, warmup=warmup,
        )
        return _time_configs(settings, target, include_compile, configs, seed, timer, clock)


def _time_configs(
    settings: dict[str, Any],
    target: torch.device,
    include_compile: bool | None,
    configs: list[TrainConfig] | None,
    seed: int,
    now: Callable[[], float],
    clock: str,
) -> TrainBenchResult:
    """The body of `benchmark_training` once `settings` (`resolve_settings`) are known;
    `now` reads the clock."""
    started = time.perf_counter()
    result = TrainBenchResult(
        settings=settings, environment=environment(target) | set_training_speed(target)
    )
    chosen = _choose_configs(target, configs, include_compile, result.notes)
    settings["configs"] = [c.label for c in chosen]
    settings["clock"], settings["threads"] = clock, torch.get_num_threads()
    size_hw = (settings["size"][0], settings["size"][1])
    torch.manual_seed(seed)
    model = build_backbone(settings["backbone"], embedding_dim=512, input_size=size_hw)
    loss_head = build_head(settings["head"], settings["classes"], 512)
    batches = _make_batches(settings, size_hw, target, seed)
    rows = {c: TrainRow(c.label, c.precision, c.channels_last, c.compile) for c in chosen}
    trainees: dict[TrainConfig, _Trainee] = {}
    for config in chosen:
        trainee = _Trainee(config, model, loss_head, target, size_hw)
        if _warm_up(trainee, rows[config], batches, settings["warmup"], result.notes):
            trainees[config] = trainee
    samples = _time_interleaved(trainees, batches, settings["steps"], target, now)
    _fill_rows(rows, samples, trainees, settings["batch"], chosen[0])
    result.rows = [rows[c] for c in chosen]
    result.seconds = time.perf_counter() - started
    return result


def _choose_configs(
    target: torch.device, configs: list[TrainConfig] | None, include_compile: bool | None,
    notes: list[str],
) -> list[TrainConfig]:
    """The configurations to time, eager fp32 first; fp16 dropped off CUDA (with a note)."""
    if include_compile is None:
        include_compile = target.type == "cuda"
    chosen = list(configs) if configs is not None else default_configs(
        target, include_compile=include_compile
    )
    base_config = TrainConfig(BASELINE, False, False)
    chosen = [base_config, *(c for c in chosen if c != base_config)]
    if any(c.precision == "fp16" for c in chosen) and target.type != "cuda":
        chosen = [c for c in chosen if c.precision != "fp16"]
        notes.append("fp16 skipped: it needs a CUDA device (use bf16 on the CPU)")
    if not any(c.compile for c in chosen):
        notes.append("torch.compile not timed (default on the CPU); pass --compile")
    return chosen


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _make_batches(
    settings: dict[str, Any], size_hw: tuple[int, int], target: torch.device, seed: int
) -> list[Batch]:
    """Two distinct (uint8 images, labels, flip mask) host batches, alternated."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = settings["batch"]
    batches = []
    for _ in range(2):
        images = torch.randint(0, 256, (batch_size, 3, *size_hw), dtype=torch.uint8,
                               generator=generator)
        labels = torch.randint(0, settings["classes"], (batch_size,), generator=generator)
        flip = random_flip_mask(batch_size, generator)
        if target.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        batches.append((images, labels, flip))
    return batches


def _warm_up(
    trainee: _Trainee, row: TrainRow, batches: list[Batch], warmup: int, notes: list[str]
) -> bool:
    """Untimed steps (compilation happens here); False when a compile failed (row skipped)."""
    config, device = trainee.config, trainee.parts.device
    try:
        synchronize(device)
        t0 = time.perf_counter()
        for i in range(max(warmup, 1 if config.compile else 0)):
            trainee.step(*batches[i % 2])
        synchronize(device)
        row.warmup_s = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - a failing compile becomes a skipped row
        if not config.compile:
            raise
        text = str(exc).strip()
        reason = text.splitlines()[0][:200] if text else "no message"
        row.skipped = f"torch.compile failed: {type(exc).__name__}: {reason}"
        notes.append(f"{config.label} skipped: {row.skipped}")
        return False
    return True


def _time_interleaved(
    trainees: dict[TrainConfig, _Trainee], batches: list[Batch], steps: int,
    device: torch.device, now: Callable[[], float],
) -> dict[TrainConfig, list[float]]:
    """Milliseconds per step: each round runs every configuration once, in rotated order."""
    samples: dict[TrainConfig, list[float]] = {c: [] for c in trainees}
    order = list(trainees)
    for round_index in range(steps):
        shift = round_index % len(order)
        for config in order[shift:] + order[:shift]:
            synchronize(device)
            t0 = now()
            trainees[config].step(*batches[round_index % 2])
            synchronize(device)
            samples[config].append((now() - t0) * 1000.0)
    return samples


def _fill_rows(
    rows: dict[TrainConfig, TrainRow], samples: dict[TrainConfig, list[float]],
    trainees: dict[TrainConfig, _Trainee], batch_size: int, base_config: TrainConfig,
) -> None:
    """Medians, images/s, speedups against `base_config` and the loss checks."""
    base_ips = batch_size / (statistics.median(samples[base_config]) / 1000.0)
    for config, times in samples.items():
        row = rows[config]
        row.ms_per_step = statistics.median(times)
        row.images_per_s = batch_size / (row.ms_per_step / 1000.0)
        row.speedup = 1.0 if config == base_config else row.images_per_s / base_ips
        row.samples = len(times)
        losses = trainees[config].losses
        row.first_loss = losses[0]
        row.loss_finite = all(map(_finite, losses))


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
