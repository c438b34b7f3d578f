"""A run's checkpoints: what they hold, how they are written and how a run resumes from one.

A checkpoint always holds the whole head and the whole optimizer state (the head's
per-class buffers gathered from every rank through the head's reduction), so a run saved
on N ranks resumes on M ranks or in one process. Fields: `CHECKPOINT_FIELDS` plus
`scheduler`, `epoch`, `best_accuracy`, `input_size`, `num_classes`, `world_size`,
`global_batch` and `resumes` (the settings changed at each resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eqmcli.errors import UserError
from eqmcli.losses import Head
from eqmcli.run.checkpoint import load_checkpoint, load_weights, require_fields, save_checkpoint
from eqmcli.run.rundir import recipe_from_state
from eqmcli.train.run_state import Change, rescale_resumed_step, resume_changes
from eqmcli.train.setup import Run
from eqmcli.train.step import apply_optimizer_settings

#: What a checkpoint must hold for training to resume from it.
CHECKPOINT_FIELDS = ("backbone", "head", "optimizer", "scaler", "rng", "step", "recipe")


def parameter_index(optimizer: torch.optim.Optimizer, parameter: torch.nn.Parameter) -> int:
    """The integer key of `parameter` in `optimizer.state_dict()["state"]`."""
    index = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p is parameter:
                return index
            index += 1
    raise ValueError("the head's weight is not in the optimizer")


def full_optimizer_state(optimizer: torch.optim.Optimizer, head: Head) -> dict[str, Any] | None:
    """The optimizer state with the head's per-class buffers as rows of every class.

    A collective when the head is class-sharded; None where the rows were not gathered.
    """
    state = optimizer.state_dict()
    index = parameter_index(optimizer, head.weight)
    per_param = dict(state["state"].get(index, {}))
    for key in sorted(per_param):
        value = per_param[key]
        if isinstance(value, Tensor) and value.shape == head.weight.shape:
            per_param[key] = head.reduction.full_rows(value)
    if any(value is None for value in per_param.values()):
        return None
    if per_param:
        state["state"] = {**state["state"], index: per_param}
    return state


def local_optimizer_state(
    state: dict[str, Any], optimizer: torch.optim.Optimizer, head: Head
) -> dict[str, Any]:
    """A whole-head optimizer state with this device's rows of the head's buffers."""
    index = parameter_index(optimizer, head.weight)
    per_param = dict(state["state"].get(index, {}))
    full_shape = (head.num_classes, head.embedding_dim)
    for key, value in per_param.items():
        if isinstance(value, Tensor) and tuple(value.shape) == full_shape:
            per_param[key] = head.reduction.local_rows(value).clone()
    if not per_param:
        return state
    return {**state, "state": {**state["state"], index: per_param}}


def checkpoint_state(run: Run, epoch: int) -> dict[str, Any] | None:
    """What `last.pt` / `best.pt` hold after `epoch` epochs (a collective; None off rank 0)."""
    parts = run.parts
    head = parts.head.full_state_dict()
    optimizer = full_optimizer_state(parts.optimizer, parts.head)
    if not run.context.is_main:
        return None
    return {
        "backbone": parts.backbone.state_dict(),
        "head": head,
        "optimizer": optimizer,
        "scheduler": parts.schedule.state_dict(run.step),
        "scaler": parts.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "epoch": epoch,
        "step": run.step,
        "best_accuracy": run.best_accuracy,
        "input_size": list(run.input_size),
        "num_classes": run.data.num_classes,
        "recipe": run.recipe.to_yaml(),
        "world_size": run.context.world_size,
        "global_batch": run.global_batch,
        "resumes": run.resumes,
    }


def save(run: Run, epoch: int, path: Path) -> None:
    """Write the run's checkpoint after `epoch` epochs to `path` (rank 0 only)."""
    state = checkpoint_state(run, epoch)
    if state is not None:
        save_checkpoint(state, path)
    if path == run.paths.last:
        run.saved_step = run.step


def read_resume_state(run_last: Path, recipe: Any) -> tuple[dict[str, Any], list[Change]]:
    """`last.pt` and the recipe changes since the run started (`UserError` if frozen ones)."""
    state = load_checkpoint(run_last)
    require_fields(state, CHECKPOINT_FIELDS, run_last)
    stored = recipe_from_state(state, str(run_last))
    return state, resume_changes(stored, recipe, str(run_last))


def restore(run: Run, state: dict[str, Any]) -> None:
    """Load weights, optimizer, scaler, RNG and step from a checkpoint into `run`.

    The optimizer's hyperparameters come from the recipe (a resume may change them); the
    step is converted when the global batch changed (`rescale_resumed_step`). A checkpoint
    saved without fp16 holds an empty scaler state: an fp16 resume starts a fresh scaler.
    """
    parts, source = run.parts, run.paths.last
    load_weights(parts.backbone, state["backbone"], source, "backbone")
    parts.head.load_full_state_dict(state["head"], source=str(source))
    try:
        parts.optimizer.load_state_dict(
            local_optimizer_state(state["optimizer"], parts.optimizer, parts.head)
        )
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{source}: its optimizer state does not fit this model "
                        f"({str(error).splitlines()[0][:120]})") from None
    apply_optimizer_settings(parts.optimizer, run.recipe.optim)
    if state["scaler"]:  # empty when saved without fp16: the scaler starts afresh
        parts.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    run.step = rescale_resumed_step(
        state, len(run.data.dataset), run.global_batch, run.steps_per_epoch
    )
    # e.g. Partial FC draws (one per forward pass) continue where they stopped
    parts.head.resume_at(run.step * parts.micro_batches)
    run.best_accuracy = state.get("best_accuracy")
    run.saved_step = int(state["step"])
    run.resumed_from = run.step
    run.resumes = list(state.get("resumes", []))
