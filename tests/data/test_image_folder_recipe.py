"""recipes/image-folder-example.yaml works as its comments say, and `eqm train --dry-run`
reads what it can: it counts an image folder's classes and images, loads the pairs files,
says when the data folder is absent, and builds non-square models."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[2] / "recipes" / "image-folder-example.yaml"
SMALL_BATCH = ["--set", "train.batch_size=8"]  # the example's 128 exceeds 24 images
FAST = ["--set", "model.backbone=tiny", "--set", "model.embedding_dim=16",
        "--set", "data.train.image_size=[32,32]", "--set", "train.batch_size=8",
        "--set", "train.epochs=1", "--set", "eval.every_epochs=1", "--set", "train.device=cpu"]


def write_faces(root: Path, classes: int = 4, per_class: int = 6) -> None:
    """root/c<i>/<k>.png: distinct grey levels per class, 40x40 px."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 40, (40, 40, 3)) + 50 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"c{c}" / f"{k}.png")


def write_pairs(path: Path, classes: int = 4) -> None:
    """20 pairs in the documented format: matched and mismatched in every tenth."""
    lines = ["# alternating matched and mismatched pairs"]
    for i in range(10):
        c, d = i % classes, (i + 1) % classes
        lines.append(f"my-faces/c{c}/0.png my-faces/c{c}/{1 + i % 5}.png 1")
        lines.append(f"my-faces/c{c}/2.png my-faces/c{d}/3.png 0")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder laid out as the example recipe expects (data/my-faces, pairs)."""
    monkeypatch.chdir(tmp_path)
    write_faces(tmp_path / "data" / "my-faces")
    write_pairs(tmp_path / "data" / "my-pairs.txt")
    return tmp_path


def test_dry_run_counts_the_folder_and_the_pairs(user_folder: Path, eqm) -> None:
    result = eqm("train", str(EXAMPLE), "--dry-run", *SMALL_BATCH)
    assert result.exit_code == 0, result.output
    assert "image-folder: 4 classes, 24 images" in result.output
    assert "20 pairs in 10 folds" in result.output
    assert "112x112 px" in result.output
    assert not (user_folder / "runs").exists()


def test_dry_run_reports_a_missing_pairs_file(user_folder: Path, eqm) -> None:
    (user_folder / "data" / "my-pairs.txt").unlink()
    result = eqm("train", str(EXAMPLE), "--dry-run", *SMALL_BATCH)
    assert result.exit_code == 2
    assert "my-pairs.txt" in result.output and "Traceback" not in result.output


def test_dry_run_refuses_a_batch_larger_than_the_folder(user_folder: Path, eqm) -> None:
    result = eqm("train", str(EXAMPLE), "--dry-run")
    assert result.exit_code == 2
    assert "larger than the data set (24 images)" in result.output


def test_dry_run_without_the_data_says_it_was_not_checked(tmp_path, monkeypatch, eqm) -> None:
    monkeypatch.chdir(tmp_path)
    result = eqm("train", str(EXAMPLE), "--dry-run", *SMALL_BATCH)
    assert result.exit_code == 0, result.output
    assert "not checked" in result.output and "data/my-faces" in result.output


@pytest.mark.parametrize("with_data", [True, False])
def test_dry_run_builds_a_non_square_model(user_folder: Path, with_data: bool, eqm) -> None:
    if not with_data:
        (user_folder / "data").rename(user_folder / "elsewhere")
    result = eqm("train", str(EXAMPLE), "--dry-run", *SMALL_BATCH,
                 "--set", "data.train.image_size=[112,96]")
    assert result.exit_code == 0, result.output
    assert "112x96 px -> 512-d" in result.output


def test_example_recipe_trains_and_verifies_on_a_small_folder(user_folder: Path, eqm) -> None:
    result = eqm("train", str(EXAMPLE), "--no-progress", *FAST)
    assert result.exit_code == 0, result.output
    run = user_folder / "runs" / "image-folder-example"
    assert (run / "checkpoints" / "last.pt").is_file()
    assert (run / "eval" / "my-pairs.json").is_file()


def test_per_class_table_names_each_identity_folder(user_folder: Path, eqm) -> None:
    assert eqm("train", str(EXAMPLE), "--no-progress", *FAST).exit_code == 0
    run = user_folder / "runs" / "image-folder-example"
    result = eqm("analyze", str(run), "--head-classes", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    with (run / "analysis" / "per_class.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["class_id"], row["class_name"]) for row in rows] == [
        ("0", "c0"), ("1", "c1"), ("2", "c2"), ("3", "c3")]
