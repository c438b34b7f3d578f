"""`eqm train RECIPE`: parse options, call `eqmcli.train.train`, render the summary."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import typer
from rich.table import Table

from eqmcli.backbones import build_backbone
from eqmcli.cli.common import console, err_console, user_errors
from eqmcli.data import build_train_data
from eqmcli.errors import TrainingStopped
from eqmcli.losses import LOSS_NAMES, resolve_hyperparameters
from eqmcli.run.recipe import Recipe, load_recipe
from eqmcli.run.rundir import default_run_dir
from eqmcli.train import TrainSummary, train
from eqmcli.train.evaluation import verification_sets
from eqmcli.train.progress import say
from eqmcli.train.run_state import check_output_path, resume_command
from eqmcli.train.setup import (
    infeasible_t2_warning,
    resolve_input_size,
    steps_per_epoch,
    training_data_roots,
)


def loss_defaults() -> str:
    """`eqm (scale=64, t1=0.5, t2=0.1), ...`: every loss with its default hyperparameters."""
    parts = []
    for name in LOSS_NAMES:
        values = ", ".join(f"{k}={v:g}" for k, v in resolve_hyperparameters(name).items())
        parts.append(f"{name} ({values})" if values else name)
    return "; ".join(parts)


def _describe_data(recipe: Recipe, table: Table) -> tuple[tuple[int, int], str | None]:
    """Rows for the training data and verification sets; the input size (height, width)
    and the infeasible-t2 warning. A file-backed source whose folder is missing is not
    read (the dry run validates a recipe for another machine too)."""
    source = recipe.data.train
    root = source.data_folder
    if root is not None and not Path(root).exists():
        table.add_row("data", f"{source.kind}: not checked: {root} does not exist "
                      "(training needs it)")
        return resolve_input_size(recipe), infeasible_t2_warning(recipe)
    data = build_train_data(source, strict=recipe.data.strict, bad_images_path=None,
                            input_size=recipe.model.input_size)
    held_out = len(data.test_dataset) if data.test_dataset is not None else 0
    table.add_row("data", f"{source.kind}: {data.num_classes:,} classes, "
                  f"{len(data.dataset):,} images ({held_out:,} held out)")
    for vset in verification_sets(recipe):
        table.add_row("verification", f"{vset.name}: {len(vset.pairs):,} pairs in "
                      f"{vset.folds} folds")
    steps = steps_per_epoch(recipe, len(data.dataset), world_size=1)
    table.add_row("steps", f"{steps:,} per epoch on one process")
    warning = infeasible_t2_warning(recipe, data.num_classes)
    return resolve_input_size(recipe, data.image_size), warning


def _describe_run(recipe: Recipe) -> tuple[Table, str | None]:
    """The dry run's table (model, loss, data, schedule) and the infeasible-t2 warning."""
    table = Table(title=f"recipe '{recipe.name}' is valid", show_header=False)
    input_size, warning = _describe_data(recipe, table)
    backbone = build_backbone(
        recipe.model.backbone, embedding_dim=recipe.model.embedding_dim, input_size=input_size
    )
    parameters = sum(p.numel() for p in backbone.parameters())
    table.add_row("backbone", f"{recipe.model.backbone} ({parameters / 1e6:.2f} M parameters)")
    table.add_row("input", f"{input_size[0]}x{input_size[1]} px -> {recipe.model.embedding_dim}-d")
    loss = ", ".join(f"{k}={v:g}" for k, v in recipe.loss.hyperparameters().items())
    table.add_row("loss", f"{recipe.loss.name} ({loss})")
    accumulation = recipe.train.grad_accumulation
    batch = f"{recipe.train.batch_size}" + (f" x {accumulation} accumulated" * (accumulation > 1))
    table.add_row("schedule", f"{recipe.train.epochs} epochs, batch {batch}, "
                  f"{recipe.optim.name} lr {recipe.optim.lr:g} ({recipe.optim.schedule})")
    return table, warning


def _render_summary(summary: TrainSummary) -> None:
    table = Table(title=f"run {summary.run_dir}")
    table.add_column("benchmark")
    table.add_column("accuracy (10-fold)", justify="right")
    table.add_column("threshold (cos)", justify="right")
    last_epoch = summary.evaluations[-1]["epoch"] if summary.evaluations else None
    for record in summary.evaluations:
        if record["epoch"] == last_epoch:
            table.add_row(
                record["benchmark"],
                f"{100 * record['accuracy']:.2f}% ± {100 * record['accuracy_std']:.2f}",
                f"{record['threshold']:.3f}",
            )
    if summary.evaluations:
        console.print(table)
    minutes, seconds = divmod(summary.seconds, 60)
    console.print(
        f"{summary.steps} steps in {int(minutes)} min {seconds:.0f} s, "
        f"{summary.images_per_second:,.0f} img/s (training steps); checkpoints in "
        f"{summary.run_dir / 'checkpoints'}"
    )


@user_errors
def train_command(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="YAML recipe file."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a recipe key, e.g. --set train.epochs=3 (repeatable). "
        f"Losses (loss.name) and their defaults: {loss_defaults()}.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run directory (default: runs/<recipe name>)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    force: bool = typer.Option(
        False, "--force", help="Empty the eqm run directory in --out and start over."
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate the recipe, show the model and exit without training."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    tensorboard: bool = typer.Option(
        False, "--tensorboard", help="Also write TensorBoard scalars to RUN/tb/ (sets "
        "train.tensorboard=true; needs the \\[tensorboard] extra).",
    ),
) -> None:
    """Train a face-embedding network from a YAML recipe."""
    if device is not None:
        overrides = [*overrides, f"train.device={device}"]
    if tensorboard:
        overrides = [*overrides, "train.tensorboard=true"]
    recipe = load_recipe(recipe_path, overrides)
    out_dir = out or default_run_dir(recipe.name)
    if dry_run:
        check_output_path(out_dir, training_data_roots(recipe))  # what training would refuse
        table, warning = _describe_run(recipe)
        console.print(table)
        if warning is not None:
            say(console, warning)
        console.print(recipe.to_yaml(), highlight=False)
        return
    try:
        summary = train(recipe, out_dir, resume=resume, force=force, progress=progress,
                        console=console)
    except TrainingStopped as exc:
        err_console.print(f"[bold red]Training stopped:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if summary.interrupted:
        err_console.print(
            f"Interrupted ({summary.stop_signal}) at step {summary.steps}; checkpoint saved. "
            "Resume with:\n"
            f"  {resume_command(recipe_path, out_dir, overrides)}",
            highlight=False, soft_wrap=True,  # never break the command over lines
        )
        raise typer.Exit(128 + signal.Signals[summary.stop_signal or "SIGINT"].value)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        _render_summary(summary)

