"""Fixtures of the data tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import Result


@pytest.fixture
def train_on_folder(eqm: Callable[..., Result]) -> Callable[[Path, Path], Result]:
    """`train_on_folder(folder, out)`: `eqm train` of a 1-epoch tiny-net recipe (8-d, batch 4,
    no verification) on the image folder `folder` with 2 loader workers, into `out`."""

    def train(folder: Path, out: Path) -> Result:
        recipe = out.with_suffix(".yaml")
        recipe.write_text(yaml.safe_dump({
            "data": {"train": {"kind": "image-folder", "root": str(folder)}, "num_workers": 2},
            "model": {"backbone": "tiny", "embedding_dim": 8},
            "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
            "eval": {"every_epochs": 0},
        }))
        return eqm("train", recipe, "--out", out)

    return train
