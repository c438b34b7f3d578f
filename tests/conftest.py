"""Shared fixtures: the tiny recipe (a copy per test), one tiny run trained per session (a
copy for tests that write into it, a factory for other settings), `eqm` run in-process, a
pairs file missing an image, training on an image folder, and a disk that fills up."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from pair_files import write_pairs_missing_an_image
from tiny_runs import run_eqm, tiny_recipe, train_tiny_run, write_untrained_run
from typer.testing import Result

from eqmcli.run.recipe import load_recipe
from eqmcli.train import train


@pytest.fixture(name="tiny_recipe")
def tiny_recipe_copy() -> dict:
    """The tiny recipe's mapping (8 classes, 24 px, 2 epochs): this test's own copy."""
    return tiny_recipe()


@pytest.fixture(scope="session")
def eqm() -> Callable[..., Result]:
    """`eqm(*args, env=None)`: runs `eqm ARGS...` in-process; the result's `exit_code`,
    `output` (stdout and stderr) and `stdout`."""
    return run_eqm


def _file_states(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file under `folder` (relative path) -> (size, modification time in ns)."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*")}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny recipe trained for 1 epoch and verified, once per session. Read-only: a test
    that writes into a run takes `tiny_run_copy`; the session fails at its end if a test
    changed this one."""
    run = train_tiny_run(tmp_path_factory.mktemp("session") / "tiny_run")
    before = _file_states(run)
    yield run
    assert _file_states(run) == before, f"a test wrote into the shared {run}: use tiny_run_copy"


@pytest.fixture
def tiny_run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """`tmp_path/run`: this test's own copy of the session's `tiny_run`, free to change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture
def train_tiny(tmp_path: Path) -> Callable[..., Path]:
    """`train_tiny(*overrides, out="run")`: `tmp_path/out`, the tiny recipe trained for 1 epoch
    with `overrides` ("key=value"), for a test that needs other settings than `tiny_run`'s."""

    def trained(*overrides: str, out: str = "run") -> Path:
        return train_tiny_run(tmp_path / out, *overrides)

    return trained


@pytest.fixture
def untrained_run(tmp_path: Path) -> Path:
    """`tmp_path/run`: `tiny_runs.write_untrained_run`'s run (the tiny network at its initial
    weights, no results): for tests of what `eqm eval` and `eqm analyze` write."""
    return write_untrained_run(tmp_path / "run")


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    """`pair_files.PAIRS` pairs over 6 images; image 3.jpg, named by the pairs in
    `pair_files.LACKING`, is gone."""
    return write_pairs_missing_an_image(tmp_path / "faces")


@pytest.fixture
def train_on_folder(eqm: Callable[..., Result]) -> Callable[[Path, Path], Result]:
    """`train_on_folder(folder, out)`: `eqm train` of a 1-epoch tiny-net recipe (8-d, batch 4,
    no verification) on the image folder `folder` with 2 loader workers, into `out`."""

    def train_folder(folder: Path, out: Path) -> Result:
        recipe = out.with_suffix(".yaml")
        recipe.write_text(yaml.safe_dump({
            "data": {"train": {"kind": "image-folder", "root": str(folder)}, "num_workers": 2},
            "model": {"backbone": "tiny", "embedding_dim": 8},
            "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
            "eval": {"every_epochs": 0},
        }))
        return eqm("train", recipe, "--out", out)

    return train_folder


@pytest.fixture
def tiny_recipe_path(tmp_path: Path) -> Path:
    """A recipe file for an 8-class, 24 px synthetic run (a few seconds per epoch)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe()))
    return path


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
