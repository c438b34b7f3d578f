"""Shared fixtures: a tiny synthetic recipe that trains in seconds on a 2-core CPU, and a
disk that fills up."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from eqmcli.run.recipe import load_recipe
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
def straight_and_resumed(tiny_recipe_path: Path, tmp_path: Path) -> Callable[[list[str]], tuple]:
    """`run(overrides)`: the tiny recipe with `overrides` trained straight through, and again
    stopped after epoch 1 and resumed; returns the two final `last.pt` states."""
    from eqmcli.run.checkpoint import load_checkpoint

    def run(overrides: list[str]) -> tuple[dict, dict]:
        straight, split = tmp_path / "straight", tmp_path / "split"
        train(load_recipe(tiny_recipe_path, overrides), straight, progress=False)
        train(load_recipe(tiny_recipe_path, [*overrides, "train.epochs=1"]), split,
              progress=False)
        train(load_recipe(tiny_recipe_path, overrides), split, resume=True, progress=False)
        return tuple(load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, split))

    return run


@pytest.fixture
def skimage_installed() -> None:
    """Skip the test, saying why, when scikit-image (the `[align]` extra) is not installed."""
    pytest.importorskip("skimage", reason="needs scikit-image: pip install 'eqmcli[align]'")


class FillingFile:
    """A file object that takes `room` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, stream, room: int) -> None:
        self.stream, self.room = stream, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.stream.write(data)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """`full_disk(marker="", room=0)`: from then on, every file the atomic writer opens whose
    path contains `marker` takes `room` bytes and then fails as a full disk does."""
    real_fdopen = os.fdopen

    def fill(marker: str = "", room: int = 0) -> None:
        def fdopen(fd: int, mode: str, *args, **kwargs):
            stream = real_fdopen(fd, mode, *args, **kwargs)
            path = os.readlink(f"/proc/self/fd/{fd}")
            return FillingFile(stream, room) if marker in path else stream

        monkeypatch.setattr(os, "fdopen", fdopen)

    return fill
