"""The trainer behind `eqm train`: set up -> restore -> epochs -> evaluate -> checkpoint.

Reproducibility: the sample order of epoch `e` is a permutation drawn from
`(recipe.seed, e)` and the flip mask of step `t` from `(recipe.seed, t)`, so a run that
stops anywhere and resumes from its checkpoint sees exactly the batches it would have
seen; the learning rate is a function of the step. The run directory is locked for the
whole run, and the lock and the process group are released in a `finally`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress, TaskID

from eqmcli.atomic import atomic_write_text
from eqmcli.data.transforms import random_flip_mask
from eqmcli.distributed import init_distributed
from eqmcli.errors import TrainingStopped
from eqmcli.run.recipe import Recipe
from eqmcli.run.rundir import RunPaths
from eqmcli.seeds import seeded_generator
from eqmcli.train.evaluation import evaluate_epoch, evaluation_due, step_evaluation_due
from eqmcli.train.interrupts import StopRequest, stop_on_signals
from eqmcli.train.progress import log_line_sinks, say, stats_fields, training_progress
from eqmcli.train.resume import read_resume_state, restore, save
from eqmcli.train.run_state import (
    Change,
    MetricsLog,
    PreparedRun,
    describe_changes,
    prepare_run_dir,
    with_absolute_paths,
)
from eqmcli.train.setup import (
    Run,
    infeasible_t2_warning,
    recipe_inputs,
    set_up,
    start,
    training_data_roots,
)
from eqmcli.train.step import train_step
from eqmcli.train.tensorboard import check_tensorboard, tensorboard_sinks


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


@dataclass
class Meter:
    """Throughput: images and seconds of the training steps (evaluation excluded)."""

    started: float = field(default_factory=time.perf_counter)
    train_seconds: float = 0.0
    images: int = 0
    window_start: float = field(default_factory=time.perf_counter)
    window_images: int = 0

    def add(self, images: int) -> None:
        self.images += images
        self.window_images += images

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent on something else (a verification within an epoch) out of
        the training time, and start a new speed window."""
        self.train_seconds -= seconds
        self.restart_window()

    def restart_window(self) -> None:
        """Start a new speed window (at each epoch start: evaluation and checkpoint time
        before it are not training time)."""
        self.window_start, self.window_images = time.perf_counter(), 0

    def window_speed(self) -> float:
        """Images/s since the previous call or window restart (the progress bar's and
        metrics' img/s)."""
        now = time.perf_counter()
        speed = self.window_images / max(now - self.window_start, 1e-9)
        self.window_start, self.window_images = now, 0
        return speed


def train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    console: Any = None,
) -> TrainSummary:
    """Train `recipe` into `out_dir` (see the module docstring for the resume guarantee).

    `console` (rich) receives the progress bar and one-line notes (what --force removed,
    what a resume changed).
    """
    out_dir = Path(out_dir)
    recipe = with_absolute_paths(recipe)  # recorded so, the run finds its data from anywhere
    check_tensorboard(recipe)  # a missing optional extra is refused before anything exists
    context, device = init_distributed(recipe.train.device, recipe.train.distributed,
                                       timeout_s=recipe.train.process_group_timeout_s)
    prepared: PreparedRun | None = None
    run: Run | None = None
    finished = False
    try:
        prepared = context.on_main(
            lambda: prepare_run_dir(out_dir, resume=resume, force=force,
                                    data_roots=training_data_roots(recipe),
                                    inputs=recipe_inputs(recipe))
        )
        context.barrier()
        report_preparation(prepared, console)
        paths = RunPaths(out_dir)
        state, changes = read_resume_state(paths.last, recipe) if resume else (None, [])
        run = set_up(recipe, paths, context, device, fresh=state is None)
        if state is not None:
            restore(run, state)
        warn_infeasible_t2(run, console)
        open_log(run, changes, console, progress=progress)
        start(run)
        summary = run_epochs(run, progress=progress, console=console)
        finished = True
        return summary
    finally:
        if run is not None:
            run.metrics.close()
        if prepared is not None and finished:
            prepared.lock.release()
        elif prepared is not None:  # refused or failed: remove a folder it left empty
            prepared.discard_if_untouched()
        context.close(wait_for_others=finished)  # no barrier on an error: it would hang


def report_preparation(prepared: PreparedRun | None, console: Any) -> None:
    """Say what `--force` removed and which crash leftovers were cleaned."""
    if prepared is None:
        return
    if prepared.removed:
        say(console, f"--force: removed {', '.join(prepared.removed)} from {prepared.paths.root}")
    if prepared.cleaned:
        say(console, f"removed {len(prepared.cleaned)} temporary file(s) left by a crash")


def warn_infeasible_t2(run: Run, console: Any) -> None:
    """Rank 0, before training: say when EqM's t2 is below what the run's class centres
    can reach in its embedding dimension (the run goes on)."""
    warning = infeasible_t2_warning(run.recipe, run.data.num_classes)
    if warning is not None and run.context.is_main:
        say(console, warning)


def open_log(run: Run, changes: list[Change], console: Any, *, progress: bool = True) -> None:
    """Write `recipe.yaml`, open `metrics.jsonl` (truncated to the resumed step) with its
    sinks (TensorBoard on rank 0 when asked; plain log lines when no live bar is shown),
    record what this process trains with (`Run.environment`) and the resume with what it
    changed."""
    main = run.context.is_main
    if main:
        atomic_write_text(run.paths.recipe, run.recipe.to_yaml())
    sinks = [
        *tensorboard_sinks(run.recipe, run.paths, main=main, resumed_from=run.resumed_from),
        *log_line_sinks(console, progress=progress, main=main, epochs=run.recipe.train.epochs,
                        total_steps=run.total_steps, start_step=run.step),
    ]
    run.metrics = MetricsLog(run.paths.metrics if main else None,
                             keep_until_step=run.resumed_from, sinks=sinks)
    for note in run.metrics.notes:
        say(console, note)
    run.metrics.write({"kind": "environment", "step": run.step, **run.environment})
    if run.resumed_from is None:
        return
    record = {"kind": "resume", "step": run.step, "changed": [c.to_dict() for c in changes]}
    run.metrics.write(record)
    run.resumes.append(record)
    if changes and main:
        say(console, f"resuming at step {run.step} with changed settings (applied from here "
                     f"on, recorded in metrics.jsonl): {describe_changes(changes)}")


def run_epochs(run: Run, *, progress: bool, console: Any) -> TrainSummary:
    """The epoch loop: train, then (per epoch) log, evaluate and checkpoint."""
    recipe, meter = run.recipe, Meter()
    live = progress and run.context.is_main and console is not None and console.is_terminal
    bar = training_progress(console, enabled=live)  # elsewhere: `LogLines` (see open_log)
    stop_signal = None
    with stop_on_signals() as stop, bar:
        task = bar.add_task("train", total=run.total_steps, completed=run.step,
                            epoch=run.step // run.steps_per_epoch + 1, loss="-", lr="-",
                            speed="-", stats="")
        for epoch in range(run.step // run.steps_per_epoch, recipe.train.epochs):
            started = time.perf_counter()
            finished, epoch_loss = train_epoch(run, epoch, stop, meter, bar, task)
            meter.train_seconds += time.perf_counter() - started
            if not finished:
                save(run, epoch, run.paths.last)
                stop_signal = stop.name
                break
            end_epoch(run, epoch, epoch_loss, time.perf_counter() - started)
            # a signal at the epoch's last step (or during its verification) stops here,
            # after the epoch's record, verification and last.pt, so a resume loses none
            if epoch + 1 < recipe.train.epochs and run.context.any(stop.requested):
                stop_signal = stop.name
                break
    return TrainSummary(
        run_dir=run.paths.root, epochs_done=run.step // run.steps_per_epoch, steps=run.step,
        seconds=time.perf_counter() - meter.started,
        images_per_second=meter.images / max(meter.train_seconds, 1e-9),
        evaluations=run.evaluations, best_accuracy=run.best_accuracy,
        interrupted=stop_signal is not None, stop_signal=stop_signal,
        resumed_from_step=run.resumed_from,
    )


def train_epoch(
    run: Run, epoch: int, stop: StopRequest, meter: Meter, bar: Progress, task: TaskID
) -> tuple[bool, float]:
    """Train the rest of `epoch`; (False when a stop signal ended it, mean loss)."""
    recipe, parts = run.recipe, run.parts
    parts.backbone.train()
    parts.head.train()
    skip_steps = run.step - epoch * run.steps_per_epoch
    run.sampler.set_epoch(epoch, skip=skip_steps * run.global_batch)
    bar.update(task, epoch=f"{epoch + 1}/{recipe.train.epochs}")
    meter.restart_window()
    loss_sum = torch.zeros((), device=parts.device)
    steps = 0
    for images, labels in run.loader:
        flip = random_flip_mask(
            images.shape[0], seeded_generator(recipe.seed * 1_000_003 + run.step)
        )
        logging = (run.step + 1) % recipe.train.log_every == 0 or run.step + 1 == run.total_steps
        loss = train_step(parts, images, labels, flip, run.step, collect_stats=logging)
        run.step += 1
        steps += 1
        loss_sum += loss
        meter.add(images.shape[0])
        if logging:
            stop_if_non_finite(run, epoch)
            log_step(run, epoch, loss, meter.window_speed(), bar, task)
        bar.update(task, completed=run.step)
        if run.sets and step_evaluation_due(recipe, run.step) and not epoch_end(run):
            stop_if_non_finite(run, epoch)  # never verify a diverged model
            paused = time.perf_counter()
            verify_and_keep_best(run, round(run.step / run.steps_per_epoch, 4), epoch)
            meter.exclude(time.perf_counter() - paused)
        if not epoch_end(run) and stop_requested(run, stop):
            stop_if_non_finite(run, epoch)
            return False, 0.0
    stop_if_non_finite(run, epoch)
    return True, float(loss_sum) / max(steps, 1)


def epoch_end(run: Run) -> bool:
    """Whether the step just taken is the last of its epoch (`end_epoch` takes over)."""
    return run.step % run.steps_per_epoch == 0


def stop_requested(run: Run, stop: StopRequest) -> bool:
    """A stop signal arrived (on any rank: checked at logging steps when distributed)."""
    if not run.context.active:
        return stop.requested
    return run.step % run.recipe.train.log_every == 0 and run.context.any(stop.requested)


def log_step(
    run: Run, epoch: int, loss: torch.Tensor, speed: float, bar: Progress, task: TaskID
) -> None:
    """One "step" record in metrics.jsonl and the progress bar's fields."""
    stats = run.parts.head.last_stats
    record = {
        "kind": "step",
        "epoch": epoch + 1,
        "step": run.step,
        "loss": float(loss),
        "lr": run.parts.schedule.lr(run.step),  # the lr of the next step
        "img_per_s": round(speed, 1),
        # the head's own "loss" is its last forward's: the last micro-batch's with accumulation
        **{k: float(v) for k, v in stats.items() if k != "loss"},
    }
    run.metrics.write(record)
    bar.update(task, loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
               speed=f"{speed:,.0f}", stats=stats_fields(stats))


def stop_if_non_finite(run: Run, epoch: int) -> None:
    """`TrainingStopped` when a loss since the last check was NaN/Inf (on any rank)."""
    if run.context.any(run.parts.non_finite):
        raise TrainingStopped(diverged_message(epoch, run.step, run.paths, run.saved_step))


def diverged_message(epoch: int, step: int, paths: RunPaths, saved_step: int | None) -> str:
    """Why training stopped on a NaN/Inf loss, and which checkpoint (if any) is good."""
    what = f"the loss became NaN/Inf in epoch {epoch + 1} (step <= {step}); training stopped"
    advice = "Lower optim.lr, set optim.grad_clip, or check the data"
    if saved_step is None:
        return (f"{what} before any checkpoint was written, so there is none to resume from. "
                f"{advice}, then start again (--force)")
    return (f"{what}; {paths.last} still holds the last good checkpoint (step {saved_step}). "
            f"{advice}, then resume it (--resume --set optim.lr=...)")


def end_epoch(run: Run, epoch: int, loss: float, seconds: float) -> None:
    """The epoch record, verification when due (rank 0), `best.pt` if better, `last.pt`."""
    run.metrics.write({"kind": "epoch", "epoch": epoch + 1, "step": run.step, "loss": loss,
                       "seconds": round(seconds, 2)})
    if run.sets and evaluation_due(run.recipe, epoch, run.step):
        verify_and_keep_best(run, epoch + 1, epoch + 1)
    save(run, epoch + 1, run.paths.last)


def verify_and_keep_best(run: Run, epochs_done: float, checkpoint_epoch: int) -> None:
    """Verify (rank 0; the other ranks wait) and write `best.pt` when the first set's
    accuracy improved. `epochs_done` goes into the records (a fraction within an epoch);
    `checkpoint_epoch` is the whole epochs `best.pt` records."""
    improved = False
    if run.context.is_main:
        improved = verify_epoch(run, epochs_done)
    improved, run.best_accuracy = run.context.broadcast((improved, run.best_accuracy))
    if improved:
        save(run, checkpoint_epoch, run.paths.best)


def verify_epoch(run: Run, epochs_done: float) -> bool:
    """Verify on the recipe's sets (rank 0); True when the first set's accuracy improved.

    After the run's last step the full results also go to `RUN/eval/<set>.json`.
    """
    records = evaluate_epoch(
        run.parts.backbone, run.sets, run.recipe, device=run.parts.device,
        input_size=run.input_size, epoch=epochs_done, step=run.step,
        final_results_to=run.paths if run.step == run.total_steps else None,
    )
    for record in records:
        run.metrics.write(record)
    run.evaluations.extend(records)
    primary = records[0]["accuracy"]  # the first set decides best.pt
    improved = primary is not None and (run.best_accuracy is None or primary > run.best_accuracy)
    if improved:
        run.best_accuracy = primary
    return improved
