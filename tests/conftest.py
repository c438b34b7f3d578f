"""Shared fixtures: a tiny synthetic recipe that trains in seconds on a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eqmcli.recipe import load_recipe
from eqmcli.train import train

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


@pytest.fixture
def tiny_recipe_path(tmp_path: Path) -> Path:
    """A recipe file for an 8-class, 24 px synthetic run (a few seconds per epoch)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RECIPE))
    return path


@pytest.fixture
def one_epoch_run(tiny_recipe_path: Path, tmp_path: Path) -> Path:
    """`tmp_path/run`: the tiny recipe trained for one epoch, without verification."""
    out = tmp_path / "run"
    train(load_recipe(tiny_recipe_path, ["train.epochs=1", "eval.every_epochs=0"]), out,
          progress=False)
    return out


@pytest.fixture
def skimage_installed() -> None:
    """Skip the test, saying why, when scikit-image (the `[align]` extra) is not installed."""
    pytest.importorskip("skimage", reason="needs scikit-image: pip install 'eqmcli[align]'")
