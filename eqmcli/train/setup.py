"""Everything a run is made of, built once before the first step (`set_up`).

The order of construction is part of the reproducibility contract: the torch RNG is
seeded from `recipe.seed`, then the data, the verification sets, the backbone and the
head are built (each may draw from it), exactly as in every earlier eqm version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from eqmcli.backbones import build_backbone, default_input_size
from eqmcli.data import TrainData, build_train_data
from eqmcli.data.augment import AugmentedDataset
from eqmcli.data.loader import make_loader
from eqmcli.devices import autocast_dtype, environment, set_training_speed
from eqmcli.distributed import DistributedContext, ShardedHead
from eqmcli.errors import UserError
from eqmcli.evaluation.pair_sets import VerificationSet
from eqmcli.losses import Head, build_head, cosine_thresholds
from eqmcli.losses.feasibility import infeasible_t2_message
from eqmcli.run.recipe import Recipe
from eqmcli.run.rundir import RunPaths
from eqmcli.train.evaluation import verification_sets
from eqmcli.train.pretrained import initialize_from
from eqmcli.train.run_state import MetricsLog
from eqmcli.train.sampler import EpochSampler
from eqmcli.train.schedule import LrSchedule
from eqmcli.train.step import StepParts, build_optimizer, compiled, place_model


@dataclass
class Run:
    """A run in progress: what was built (`set_up`) and where it stands (`step`, ...)."""

    recipe: Recipe
    paths: RunPaths
    context: DistributedContext
    data: TrainData
    input_size: tuple[int, int]
    steps_per_epoch: int
    parts: StepParts
    sets: list[VerificationSet]
    sampler: EpochSampler
    loader: DataLoader | None = None
    metrics: MetricsLog = field(default_factory=lambda: MetricsLog(None))
    step: int = 0
    best_accuracy: float | None = None
    saved_step: int | None = None  # step of the checkpoint in last.pt (None: none yet)
    resumed_from: int | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)  # `training_environment`

    @property
    def batch_size(self) -> int:
        """Images per optimizer step on this rank (all its micro-batches)."""
        return step_batch(self.recipe)

    @property
    def global_batch(self) -> int:
        """Images per optimizer step over all ranks."""
        return self.batch_size * self.context.world_size

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.recipe.train.epochs


def resolve_input_size(
    recipe: Recipe, data_image_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """The model's input (height, width) in pixels: `model.input_size`, else the data's
    image size (`data_image_size` once the data is read, else `data.train.image_size`, a
    side or [height, width]), else the backbone's default."""
    size = recipe.model.input_size or data_image_size or recipe.data.train.image_size
    if not size:
        return default_input_size(recipe.model.backbone)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def training_data_roots(recipe: Recipe) -> list[Path]:
    """The folders the training data is read from (none for synthetic data)."""
    root = recipe.data.train.data_folder
    return [Path(root)] if root is not None else []


def recipe_inputs(recipe: Recipe) -> list[tuple[str, Path]]:
    """(recipe key, path) for every file or folder the run reads: the training data,
    `model.init_from`, `eval.data_root` and the `eval.sets` entries that are files (a
    relative one under `eval.data_root` and under the working folder)."""
    inputs = [("data.train.root", root) for root in training_data_roots(recipe)]
    data_root = recipe.eval.data_root
    for key, value in (("model.init_from", recipe.model.init_from), ("eval.data_root", data_root)):
        if value is not None:
            inputs.append((key, Path(value)))
    for entry in recipe.eval.sets:
        candidates = [Path(entry)] + ([Path(data_root) / entry] if data_root is not None else [])
        inputs += [("eval.sets", path) for path in candidates if path.is_file()]
    return inputs


def build_training_head(recipe: Recipe, num_classes: int) -> Head:
    """The head of a run: the loss head, class-sharded over the ranks in sharded mode."""
    hyperparameters = recipe.loss.hyperparameters()
    sample_rate = recipe.train.sample_rate
    if recipe.train.distributed == "sharded":
        return ShardedHead(
            recipe.loss.name, num_classes, recipe.model.embedding_dim,
            group=None, sample_rate=sample_rate, seed=recipe.seed, **hyperparameters,
        )
    if sample_rate < 1.0:
        raise UserError(
            f"train.sample_rate {sample_rate:g} (Partial FC) needs train.distributed: sharded"
        )
    return build_head(
        recipe.loss.name, num_classes=num_classes, embedding_dim=recipe.model.embedding_dim,
        **hyperparameters,
    )


def infeasible_t2_warning(recipe: Recipe, num_classes: int | None = None) -> str | None:
    """EqM only: a one-line warning when `loss.t2` (a cosine) is below what `num_classes`
    centres in `model.embedding_dim` dimensions can reach (`infeasible_t2_message`).

    Without `num_classes`, the count the recipe states itself (synthetic data); None where
    only the data knows it (image folders, records), as for every loss but EqM.
    """
    t2 = cosine_thresholds(recipe.loss.name, recipe.loss.hyperparameters()).get("t2")
    if t2 is None:
        return None
    if num_classes is None:
        num_classes = getattr(recipe.data.train, "num_classes", None)
        if num_classes is None:
            return None
    return infeasible_t2_message(t2, num_classes, recipe.model.embedding_dim)


def step_batch(recipe: Recipe) -> int:
    """Images per optimizer step on one rank: `train.batch_size` x `train.grad_accumulation`."""
    return recipe.train.batch_size * recipe.train.grad_accumulation


def steps_per_epoch(recipe: Recipe, num_images: int, world_size: int) -> int:
    """Optimizer steps per epoch (incomplete last batches dropped); `UserError` if none."""
    steps = num_images // (step_batch(recipe) * world_size)
    if steps < 1:
        accumulation = recipe.train.grad_accumulation
        times = f" x train.grad_accumulation {accumulation}" if accumulation > 1 else ""
        raise UserError(
            f"train.batch_size {recipe.train.batch_size}{times} x {world_size} rank(s) is "
            f"larger than the data set ({num_images} images)"
        )
    return steps


def set_up(
    recipe: Recipe, paths: RunPaths, context: DistributedContext, device: torch.device,
    *, fresh: bool = True,
) -> Run:
    """Data, verification sets, model, optimizer and schedule of a run (nothing trained).

    A `fresh` run (not a resume) may start from another run's weights (`model.init_from`).
    """
    amp_dtype = autocast_dtype(recipe.train.precision, device, training=True)  # refused first
    torch.manual_seed(recipe.seed)
    data = build_train_data(
        recipe.data.train, strict=recipe.data.strict,
        bad_images_path=paths.bad_images if context.is_main else None,
        input_size=recipe.model.input_size,
    )
    height, width = resolve_input_size(recipe, data.image_size)
    sets = verification_sets(recipe)
    steps = steps_per_epoch(recipe, len(data.dataset), context.world_size)
    backbone = build_backbone(
        recipe.model.backbone, embedding_dim=recipe.model.embedding_dim,
        input_size=(height, width),
    )
    head = build_training_head(recipe, data.num_classes)
    if fresh:  # a resume restores its own weights instead
        initialize_from(recipe.model, backbone, head, data, input_size=(height, width),
                        device=device,
                        load_head=lambda h, state: h.load_full_state_dict(state, strict=False))
    place_model(backbone, head, device, channels_last=recipe.train.channels_last)
    optimizer = build_optimizer(recipe.optim, [*backbone.parameters(), *head.parameters()])
    parts = StepParts(
        backbone=backbone, head=head, optimizer=optimizer,
        schedule=LrSchedule(recipe.optim, steps, steps * recipe.train.epochs),
        device=device, amp_dtype=amp_dtype,
        channels_last=recipe.train.channels_last, input_size=(height, width),
        grad_clip=recipe.optim.grad_clip, micro_batches=recipe.train.grad_accumulation,
    )
    sampler = EpochSampler(
        len(data.dataset), recipe.seed, rank=context.rank, world_size=context.world_size,
        batch_size=step_batch(recipe), tag_epoch=recipe.data.augment.enabled,
    )
    run = Run(recipe, paths, context, data, (height, width), steps, parts, sets, sampler)
    run.environment = training_environment(parts, context)
    return run


def training_environment(parts: StepParts, context: DistributedContext) -> dict[str, Any]:
    """Turn on the device's training speed settings (`set_training_speed`) and describe
    what this process trains with: device, torch, host, ranks, autocast dtype and those
    settings (the run's "environment" record in metrics.jsonl)."""
    return {
        **environment(parts.device),
        **set_training_speed(parts.device),
        "world_size": context.world_size,
        "autocast": str(parts.amp_dtype).removeprefix("torch.") if parts.amp_dtype else None,
        "grad_scaler": parts.scaler.is_enabled(),
    }


def start(run: Run) -> None:
    """After any restore: wrap the modules for DDP / compile and open the data loader."""
    parts, context, device = run.parts, run.context, run.parts.device
    wrapped = context.wrap_backbone(parts.backbone, device)
    parts.forward_backbone = compiled(wrapped, run.recipe.train.compile)
    parts.forward_head = context.wrap_head(parts.head, device)
    augment = run.recipe.data.augment
    dataset = run.data.dataset
    if augment.enabled:
        dataset = AugmentedDataset(dataset, augment, run.recipe.seed, run.data.image_size)
    run.loader = make_loader(
        dataset, batch_size=run.batch_size, sampler=run.sampler,
        num_workers=run.recipe.data.num_workers, pin_memory=device.type == "cuda",
        drop_last=True,
    )
