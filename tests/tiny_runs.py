"""What conftest's fixtures and the helper modules share: the tiny recipe (8 classes, 24 px,
16-d: an epoch in seconds on a 2-core CPU), training it, and running `eqm` in-process.
Tests take these through conftest's fixtures (`tiny_recipe`, `tiny_run`, `eqm`, ...)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from typer.testing import CliRunner, Result

from eqmcli.cli import app

TINY_RECIPE = {
    "name": "tiny",
    "seed": 3,
    "data": {
        "train": {
            "kind": "synthetic",
            "num_classes": 8,
            "min_images": 6,
            "max_images": 20,
            "image_size": 24,
            "test_images_per_class": 2,
            "verification_identities": 10,
            "verification_folds": 10,
            "verification_pairs_per_fold": 4,
        },
        "num_workers": 0,
    },
    "model": {"backbone": "tiny", "embedding_dim": 16},
    "loss": {"name": "eqm", "scale": 16.0},
    "optim": {"lr": 0.05, "schedule": "cosine", "warmup_epochs": 0.5},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "log_every": 1},
    "eval": {"every_epochs": 1, "batch_size": 64},
}


def tiny_recipe() -> dict:
    """A deep copy of `TINY_RECIPE`, free to change."""
    return copy.deepcopy(TINY_RECIPE)


def run_eqm(*args: object, env: dict[str, str] | None = None) -> Result:
    """`eqm ARGS...` in-process (each argument as a string): click's result, whose `exit_code`
    and `output` (stdout and stderr as a terminal shows them) the tests check."""
    return CliRunner().invoke(app, [str(arg) for arg in args], env=env)


def train_tiny_run(out: Path, *overrides: str) -> Path:
    """`out`: the tiny recipe trained for 1 epoch (verified after it), then `overrides`
    ("key=value", applied after `train.epochs=1`)."""
    from eqmcli.run.recipe import apply_overrides, recipe_from_mapping
    from eqmcli.train import train

    recipe = apply_overrides(tiny_recipe(), ["train.epochs=1", *overrides])
    train(recipe_from_mapping(recipe), out, progress=False)
    return out


def write_untrained_run(out: Path, *overrides: str) -> Path:
    """`out`: a run folder holding only recipe.yaml and checkpoints/last.pt of the tiny
    recipe (with `overrides`)'s network and head at their initial weights (torch seed 0;
    "epoch" 2, "step" 10), no results; written in a blink, without training."""
    from eqmcli.backbones import build_backbone
    from eqmcli.losses import build_head
    from eqmcli.run.checkpoint import save_checkpoint
    from eqmcli.run.recipe import apply_overrides, recipe_from_mapping

    recipe = recipe_from_mapping(apply_overrides(tiny_recipe(), list(overrides)))
    torch.manual_seed(0)
    backbone = build_backbone("tiny", embedding_dim=16, input_size=(24, 24))
    head = build_head(
        recipe.loss.name, num_classes=8, embedding_dim=16, **recipe.loss.hyperparameters()
    )
    out.mkdir(parents=True)
    (out / "recipe.yaml").write_text(recipe.to_yaml())
    state = {
        "backbone": backbone.state_dict(),
        "head": head.state_dict(),
        "recipe": recipe.to_yaml(),
        "input_size": [24, 24],
        "epoch": 2,
        "step": 10,
        "best_accuracy": 0.0,
    }
    save_checkpoint(state, out / "checkpoints" / "last.pt")
    return out
