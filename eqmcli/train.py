"""The training loop behind `eqm train`: device, precision, checkpoints, exact resume.

Reproducibility: the sample order of epoch `e` is a permutation drawn from
`(recipe.seed, e)` and the flip mask of step `t` from `(recipe.seed, t)`, so a run that
stops anywhere and resumes from its checkpoint sees exactly the batches it would have seen.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler

from eqmcli.atomic import atomic_write_text
from eqmcli.checkpoint import load_checkpoint, load_weights, require_fields
from eqmcli.devices import autocast, autocast_dtype
from eqmcli.distributed import build_training_head, init_distributed, rescale_resumed_step
from eqmcli.errors import TrainingStopped, UserError
from eqmcli.recipe import OptimSection, Recipe
from eqmcli.rundir import RunPaths, recipe_from_state
from eqmcli.schedule import LrSchedule
from eqmcli.training.interrupts import stop_on_signals
from eqmcli.training.run_state import (
    Change,
    MetricsLog,
    PreparedRun,
    describe_changes,
    prepare_run_dir,
    resume_changes,
    with_absolute_paths,
)

#: What a checkpoint must hold for training to resume from it.
CHECKPOINT_FIELDS = ("backbone", "head", "optimizer", "scaler", "rng", "step", "recipe")


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, optionally skipping the samples already consumed.

    With `world_size` ranks, global step t takes the permutation's samples
    [t·N·B, (t+1)·N·B) and rank r the r-th block of `batch_size` (B) of them.
    """

    def __init__(
        self, num_samples: int, seed: int, *, rank: int = 0, world_size: int = 1,
        batch_size: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.skip = 0
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the permutation of `epoch`; `skip` samples (a resumed epoch) are left out."""
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)[self.skip :]
        if self.world_size > 1:
            steps = len(order) // (self.world_size * self.batch_size)
            blocks = order[: steps * self.world_size * self.batch_size].view(
                steps, self.world_size, self.batch_size
            )
            order = blocks[:, self.rank].reshape(-1)
        return iter(order.tolist())

    def __len__(self) -> int:
        if self.world_size > 1:
            steps = (self.num_samples - self.skip) // (self.world_size * self.batch_size)
            return steps * self.batch_size
        return self.num_samples - self.skip


@dataclass
class TrainSummary:
    """What a finished (or interrupted) run reports."""

    run_dir: Path
    epochs_done: int
    steps: int
    seconds: float
    images_per_second: float  # training steps only (evaluation time excluded)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best_accuracy: float | None = None
    interrupted: bool = False
    stop_signal: str | None = None  # "SIGINT" or "SIGTERM" when interrupted by a signal
    resumed_from_step: int | None = None


def diverged_message(epoch: int, step: int, paths: RunPaths, saved_step: int | None) -> str:
    """Why training stopped on a NaN/Inf loss, and which checkpoint (if any) is good."""
    what = f"the loss became NaN/Inf in epoch {epoch + 1} (step <= {step}); training stopped"
    advice = "Lower optim.lr, set optim.grad_clip, or check the data"
    if saved_step is None:
        return (f"{what} before any checkpoint was written, so there is none to resume from. "
                f"{advice}, then start again (--force)")
    return (f"{what}; {paths.last} still holds the last good checkpoint (step {saved_step}). "
            f"{advice}, then resume it (--resume --set optim.lr=...)")


def optimizer_settings(optim: OptimSection) -> dict[str, float]:
    """The per-group hyperparameters the recipe sets (besides the lr, which the schedule sets)."""
    if optim.name == "sgd":
        return {"momentum": optim.momentum, "weight_decay": optim.weight_decay}
    return {"weight_decay": optim.weight_decay}


def build_optimizer(recipe: Recipe, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over backbone and head parameters."""
    optim = recipe.optim
    settings = optimizer_settings(optim)
    if optim.name == "sgd":
        return torch.optim.SGD(parameters, lr=optim.lr, **settings)
    return torch.optim.AdamW(parameters, lr=optim.lr, **settings)


def apply_optimizer_settings(optimizer: torch.optim.Optimizer, optim: OptimSection) -> None:
    """Overwrite the hyperparameters a restored optimizer state brought back with the recipe's."""
    for group in optimizer.param_groups:
        group.update(optimizer_settings(optim))


def _verification_sets(recipe: Recipe) -> list[Any]:
    """The recipe's `eval.sets`, loaded once before training starts (fails early if missing)."""
    from eqmcli.evaluate import load_training_sets

    return load_training_sets(recipe)


def _progress_fields(stats: dict[str, float]) -> str:
    shown = []
    for key, label in (("hard_fraction", "hard"), ("inter_violation_fraction", "inter")):
        if key in stats:
            shown.append(f"{label} {stats[key]:.2f}")
    return "  ".join(shown)


def evaluate_epoch(
    backbone: nn.Module,
    verification_sets: list[Any],
    recipe: Recipe,
    *,
    device: torch.device,
    input_size: tuple[int, ...],
    epoch: int,
    step: int,
    final_results_to: RunPaths | None = None,
) -> list[dict[str, Any]]:
    """Verify on every set; one `metrics.jsonl` "eval" record each (ROC points left out).

    With `final_results_to`, each full result (ROC included) is also written to
    `RUN/eval/<benchmark>.json`, as `eqm eval` does.
    """
    from eqmcli.evaluate import write_result
    from eqmcli.verification import evaluate_set

    records = []
    for vset in verification_sets:
        result = evaluate_set(
            backbone, vset, device=device, input_size=input_size, flip=recipe.eval.flip,
            batch_size=recipe.eval.batch_size, precision=recipe.train.precision,
            progress=False,
        )
        if final_results_to is not None:
            write_result(
                final_results_to.root,
                replace(result, checkpoint=str(final_results_to.last), epoch=epoch, step=step),
            )
        records.append({"kind": "eval", "epoch": epoch, "step": step, **result.to_dict(roc=False)})
    return records


def training_progress(console: Any, *, enabled: bool) -> Any:
    """The rich progress bar of a run: epoch, steps, loss, lr, img/s, EqM fractions, ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} img/s"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    console: Any = None,
) -> TrainSummary:
    """Train `recipe` into `out_dir`; see the module docstring for the resume guarantee.

    The run directory is locked for the whole run (`RunLock`); `console` (rich) receives
    the progress bar and one-line notes (what --force removed, what a resume changed).
    """
    out_dir = Path(out_dir)
    recipe = with_absolute_paths(recipe)  # recorded so, the run finds its data from anywhere
    dist_ctx, device = init_distributed(recipe.train.device, recipe.train.distributed)
    prepared: PreparedRun | None = None
    try:
        prepared = dist_ctx.on_main(
            lambda: prepare_run_dir(out_dir, resume=resume, force=force,
                                    data_roots=training_data_roots(recipe))
        )
        dist_ctx.barrier()
        if prepared is not None:
            _report_preparation(prepared, console)
        return _train(recipe, RunPaths(out_dir), dist_ctx, device, resume=resume,
                      progress=progress, console=console)
    finally:
        if prepared is not None:
            prepared.lock.release()
        dist_ctx.close()


def training_data_roots(recipe: Recipe) -> list[Path]:
    """The folders the training data is read from (none for synthetic data)."""
    root = getattr(recipe.data.train, "root", None)
    return [Path(root)] if root is not None else []


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False, soft_wrap=True)


def _report_preparation(prepared: PreparedRun, console: Any) -> None:
    if prepared.removed:
        _say(console, f"--force: removed {', '.join(prepared.removed)} from {prepared.paths.root}")
    if prepared.cleaned:
        _say(console, f"removed {len(prepared.cleaned)} temporary file(s) left by a crash")


def _train(
    recipe: Recipe,
    paths: RunPaths,
    dist_ctx: Any,
    device: torch.device,
    *,
    resume: bool,
    progress: bool,
    console: Any,
) -> TrainSummary:
    from eqmcli.backbones import build_backbone
    from eqmcli.data import build_train_data
    from eqmcli.data.loader import make_loader
    from eqmcli.data.transforms import random_flip_mask, to_model_input
    out_dir = paths.root
    state: dict[str, Any] | None = None
    changes: list[Change] = []
    if resume:
        state = load_checkpoint(paths.last)
        require_fields(state, CHECKPOINT_FIELDS, paths.last)
        changes = resume_changes(recipe_from_state(state, str(paths.last)), recipe,
                                 str(paths.last))

    amp_dtype = autocast_dtype(recipe.train.precision, device)
    channels_last = recipe.train.channels_last
    torch.manual_seed(recipe.seed)

    data = build_train_data(
        recipe.data.train,
        strict=recipe.data.strict,
        bad_images_path=paths.bad_images if dist_ctx.is_main else None,
    )
    input_size = tuple(recipe.model.input_size or data.image_size)
    verification_sets = _verification_sets(recipe) if recipe.eval.every_epochs else []
    batch_size = recipe.train.batch_size
    steps_per_epoch = len(data.dataset) // (batch_size * dist_ctx.world_size)
    if steps_per_epoch < 1:
        raise UserError(
            f"train.batch_size {batch_size} x {dist_ctx.world_size} rank(s) is larger than the "
            f"data set ({len(data.dataset)} images)"
        )
    total_steps = steps_per_epoch * recipe.train.epochs

    backbone = build_backbone(
        recipe.model.backbone, embedding_dim=recipe.model.embedding_dim, input_size=input_size
    )
    head = build_training_head(recipe, data.num_classes, dist_ctx)
    backbone.to(device)
    head.to(device)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(recipe, [*backbone.parameters(), *head.parameters()])
    schedule = LrSchedule(recipe.optim, steps_per_epoch, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    step = 0
    best_accuracy: float | None = None
    if state is not None:
        load_weights(backbone, state["backbone"], paths.last, "backbone")
        dist_ctx.load_head_state(head, state["head"])
        optimizer.load_state_dict(
            dist_ctx.local_optimizer_state(state["optimizer"], optimizer, head)
        )
        apply_optimizer_settings(optimizer, recipe.optim)  # the recipe's, not the saved ones
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        step = rescale_resumed_step(
            state, len(data.dataset), batch_size * dist_ctx.world_size, steps_per_epoch
        )
        head.draws = step  # Partial FC draws continue where they stopped
        best_accuracy = state.get("best_accuracy")
    resumed_from = step if state is not None else None
    resumes = list(state.get("resumes", [])) if state is not None else []

    if dist_ctx.is_main:
        atomic_write_text(paths.recipe, recipe.to_yaml())
    metrics = MetricsLog(
        paths.metrics if dist_ctx.is_main else None,
        keep_until_step=step if state is not None else None,
    )
    for note in metrics.notes:
        _say(console, note)
    if resumed_from is not None:
        record = {"kind": "resume", "step": step, "changed": [c.to_dict() for c in changes]}
        metrics.write(record)
        resumes.append(record)
        if changes and dist_ctx.is_main:
            _say(console, f"resuming at step {step} with changed settings (applied from "
                          f"here on, recorded in metrics.jsonl): {describe_changes(changes)}")
    wrapped_backbone = dist_ctx.wrap_backbone(backbone, device)
    forward_backbone = torch.compile(wrapped_backbone) if recipe.train.compile else wrapped_backbone
    forward_head = dist_ctx.wrap_head(head, device)

    def checkpoint_state(epoch: int) -> dict[str, Any]:
        return {
            "backbone": backbone.state_dict(),
            "head": dist_ctx.head_state(head),
            "optimizer": dist_ctx.optimizer_state(optimizer, head),
            "scheduler": schedule.state_dict(step),
            "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "epoch": epoch,
            "step": step,
            "best_accuracy": best_accuracy,
            "input_size": list(input_size),
            "num_classes": data.num_classes,
            "recipe": recipe.to_yaml(),
            "world_size": dist_ctx.world_size,
            "global_batch": batch_size * dist_ctx.world_size,
            "resumes": resumes,
        }

    sampler = EpochSampler(
        len(data.dataset), recipe.seed, rank=dist_ctx.rank, world_size=dist_ctx.world_size,
        batch_size=batch_size,
    )
    loader = make_loader(
        data.dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=recipe.data.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )

    bar = training_progress(console, enabled=progress and dist_ctx.is_main)
    evaluations: list[dict[str, Any]] = []
    train_seconds = 0.0
    started = time.perf_counter()
    images_seen = 0
    start_epoch = step // steps_per_epoch
    interrupted = False
    non_finite = torch.zeros((), dtype=torch.bool, device=device)

    saved = {"step": int(state["step"]) if state is not None else None}

    def stop_if_non_finite(epoch: int) -> None:
        if dist_ctx.any(non_finite):
            raise TrainingStopped(diverged_message(epoch, step, paths, saved["step"]))

    with stop_on_signals() as interrupt, bar:
        task = bar.add_task(
            "train", total=total_steps, completed=step, epoch=start_epoch + 1, loss="-",
            lr="-", speed="-", stats="",
        )
        window_start, window_images = time.perf_counter(), 0
        for epoch in range(start_epoch, recipe.train.epochs):
            backbone.train()
            head.train()
            skip_steps = step - epoch * steps_per_epoch
            sampler.set_epoch(epoch, skip=skip_steps * batch_size * dist_ctx.world_size)
            bar.update(task, epoch=f"{epoch + 1}/{recipe.train.epochs}")
            epoch_loss_sum = torch.zeros((), device=device)
            epoch_steps = 0
            epoch_started = time.perf_counter()
            for images, labels in loader:
                flip_generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
                flip = random_flip_mask(images.shape[0], flip_generator)
                inputs = to_model_input(
                    images, device, flip_mask=flip, channels_last=channels_last, size=input_size
                )
                labels = labels.to(device, non_blocking=True)
                schedule.apply(optimizer, step)
                with autocast(device, amp_dtype):
                    embeddings = forward_backbone(inputs)
                    loss = forward_head(embeddings, labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if recipe.optim.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    dist_ctx.clip_grad_norm(backbone.parameters(), head, recipe.optim.grad_clip)
                non_finite |= ~torch.isfinite(loss.detach())
                scaler.step(optimizer)
                scaler.update()
                step += 1
                epoch_steps += 1
                epoch_loss_sum += loss.detach()
                images_seen += images.shape[0]
                window_images += images.shape[0]
                if step % recipe.train.log_every == 0 or step == total_steps:
                    stop_if_non_finite(epoch)
                    now = time.perf_counter()
                    speed = window_images / max(now - window_start, 1e-9)
                    window_start, window_images = now, 0
                    record = {
                        "kind": "step",
                        "epoch": epoch + 1,
                        "step": step,
                        "loss": float(loss.detach()),
                        "lr": schedule.lr(step),  # the lr of the next step
                        "img_per_s": round(speed, 1),
                        **{k: float(v) for k, v in head.last_stats.items()},
                    }
                    metrics.write(record)
                    bar.update(
                        task, loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                        speed=f"{speed:,.0f}", stats=_progress_fields(head.last_stats),
                    )
                bar.update(task, completed=step)
                if interrupt.requested if not dist_ctx.active else (
                    step % recipe.train.log_every == 0 and dist_ctx.any(interrupt.requested)
                ):
                    interrupted = True
                    break
            stop_if_non_finite(epoch)
            train_seconds += time.perf_counter() - epoch_started
            if interrupted:
                dist_ctx.save_checkpoint(checkpoint_state(epoch), paths.last)
                saved["step"] = step
                break
            metrics.write(
                {
                    "kind": "epoch",
                    "epoch": epoch + 1,
                    "step": step,
                    "loss": float(epoch_loss_sum) / max(epoch_steps, 1),
                    "seconds": round(time.perf_counter() - epoch_started, 2),
                }
            )
            last_epoch = epoch + 1 == recipe.train.epochs
            every = recipe.eval.every_epochs
            improved = False
            if verification_sets and (last_epoch or (epoch + 1) % every == 0):
                if dist_ctx.is_main:
                    records = evaluate_epoch(
                        backbone, verification_sets, recipe, device=device,
                        input_size=input_size, epoch=epoch + 1, step=step,
                        final_results_to=paths if last_epoch else None,
                    )
                    for record in records:
                        metrics.write(record)
                    evaluations.extend(records)
                    primary = records[0]["accuracy"]  # the first set decides best.pt
                    improved = best_accuracy is None or primary > best_accuracy
                    best_accuracy = primary if improved else best_accuracy
                # the other ranks wait here while rank 0 evaluates
                improved, best_accuracy = dist_ctx.broadcast((improved, best_accuracy))
            if improved:
                dist_ctx.save_checkpoint(checkpoint_state(epoch + 1), paths.best)
            dist_ctx.save_checkpoint(checkpoint_state(epoch + 1), paths.last)
            saved["step"] = step
    seconds = time.perf_counter() - started
    return TrainSummary(
        run_dir=out_dir,
        epochs_done=step // steps_per_epoch,
        steps=step,
        seconds=seconds,
        images_per_second=images_seen / max(train_seconds, 1e-9),
        evaluations=evaluations,
        best_accuracy=best_accuracy,
        interrupted=interrupted,
        stop_signal=interrupt.name if interrupted else None,
        resumed_from_step=resumed_from,
    )
