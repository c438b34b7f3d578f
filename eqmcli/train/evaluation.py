"""Verification during training: the recipe's `eval.sets`, scored by the one routine
(`eqmcli.evaluation.verification.evaluate_set`) that `eqm eval` uses too."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from eqmcli.evaluation.evaluate import load_training_sets, write_result
from eqmcli.evaluation.pair_sets import VerificationSet
from eqmcli.evaluation.verification import evaluate_set
from eqmcli.run.recipe import Recipe
from eqmcli.run.rundir import RunPaths


def verifies(recipe: Recipe) -> bool:
    """Whether the run verifies during training (`eval.every_epochs` or `eval.every_steps`)."""
    return bool(recipe.eval.every_epochs or recipe.eval.every_steps)


def verification_sets(recipe: Recipe) -> list[VerificationSet]:
    """The recipe's `eval.sets`, loaded once before training starts (fails early if missing);
    none when the run does not verify during training."""
    return load_training_sets(recipe) if verifies(recipe) else []


def step_evaluation_due(recipe: Recipe, step: int) -> bool:
    """Whether to verify after optimizer step `step` (counted from 1): every `eval.every_steps`."""
    every = recipe.eval.every_steps
    return bool(every) and step % every == 0


def evaluation_due(recipe: Recipe, epoch: int, step: int) -> bool:
    """Whether to verify at the end of (0-based) `epoch`, which ends with optimizer step
    `step`: every `eval.every_epochs`, when `step` is due (`eval.every_steps`), and after
    the last epoch of a run that verifies at all."""
    every = recipe.eval.every_epochs
    return verifies(recipe) and (
        epoch + 1 == recipe.train.epochs
        or (bool(every) and (epoch + 1) % every == 0)
        or step_evaluation_due(recipe, step)
    )


def evaluate_epoch(
    backbone: nn.Module,
    sets: list[VerificationSet],
    recipe: Recipe,
    *,
    device: torch.device,
    input_size: tuple[int, ...],
    epoch: float,
    step: int,
    final_results_to: RunPaths | None = None,
) -> list[dict[str, Any]]:
    """Verify on every set; one `metrics.jsonl` "eval" record each (ROC points left out).

    `epoch` is the number of epochs done: an integer at an epoch's end, a fraction for a
    verification within an epoch (`eval.every_steps`).

    The embeddings are computed as `eqm eval` computes them (`evaluate_set`'s default
    precision, whatever `train.precision` trained in), so the final epoch's results equal
    `eqm eval RUN`'s on `last.pt`.

    With `final_results_to`, each full result (ROC included) is also written to
    `RUN/eval/<benchmark>.json`, as `eqm eval` does.
    """
    records = []
    for vset in sets:
        result = evaluate_set(
            backbone, vset, device=device, input_size=input_size, flip=recipe.eval.flip,
            batch_size=recipe.eval.batch_size, progress=False,
        )
        if final_results_to is not None:
            write_result(
                final_results_to.root,
                replace(result, checkpoint=str(final_results_to.last), epoch=epoch, step=step),
            )
        records.append({"kind": "eval", "epoch": epoch, "step": step, **result.to_dict(roc=False)})
    return records
