"""The user's own verification pairs: in `eval.sets` during training, and one-class files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from eqmcli.errors import UserError
from eqmcli.evaluation.verification import verify
from eqmcli.run.recipe import load_recipe
from eqmcli.train import train


def _faces(root: Path, classes: int = 4, per_class: int = 6, size: int = 24) -> Path:
    """root/<id>/<k>.png: a flat colour per identity with a little noise per image."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"id{c}").mkdir(parents=True)
        for k in range(per_class):
            base = np.array([60 * c, 255 - 50 * c, (97 * c) % 256], dtype=np.int16)
            noise = rng.integers(-12, 13, size=(size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"id{c}" / f"{k}.png")
    return root


def _pairs_file(path: Path, lines: list[tuple[str, str, int]]) -> Path:
    path.write_text("".join(f"{a} {b} {label}\n" for a, b, label in lines))
    return path


def _mixed_pairs(classes: int = 4) -> list[tuple[str, str, int]]:
    lines = []
    for k in range(20):
        c = k % classes
        if k % 2 == 0:
            lines.append((f"id{c}/{k % 5}.png", f"id{c}/{(k + 1) % 5}.png", 1))
        else:
            lines.append((f"id{c}/{k % 5}.png", f"id{(c + 1) % classes}/{k % 5}.png", 0))
    return lines


def _image_folder_recipe(recipe: dict, tmp_path: Path, sets: list[str]) -> Path:
    recipe["data"]["train"] = {"kind": "image-folder", "root": str(tmp_path / "faces")}
    recipe["eval"]["sets"] = sets
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_eval_sets_accept_a_pairs_file_for_image_folder_runs(
    tmp_path: Path, tiny_recipe: dict
) -> None:
    _faces(tmp_path / "faces")
    pairs = _pairs_file(tmp_path / "faces" / "mypairs.txt", _mixed_pairs())
    out = tmp_path / "run"
    recipe = load_recipe(_image_folder_recipe(tiny_recipe, tmp_path, [str(pairs)]))
    summary = train(recipe, out, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]  # every epoch
    assert all(r["benchmark"] == "mypairs" and r["pairs"] == 20 for r in evals)
    assert (out / "checkpoints" / "best.pt").is_file()
    assert summary.best_accuracy is not None
    final = json.loads((out / "eval" / "mypairs.json").read_text())
    assert final["accuracy"] == evals[-1]["accuracy"]


def test_eval_sets_accept_a_bin_path_relative_to_the_data_root(
    tmp_path: Path, tiny_recipe: dict
) -> None:
    from eqmcli.evaluation.evaluate import recipe_sources
    from eqmcli.evaluation.pair_sets import write_bin

    _faces(tmp_path / "faces")
    pairs = _pairs_file(tmp_path / "faces" / "mypairs.txt", _mixed_pairs())
    write_bin(tmp_path / "faces", pairs, tmp_path / "bench" / "mine.bin")
    recipe = load_recipe(_image_folder_recipe(tiny_recipe, tmp_path, ["mine.bin"]))
    (source,) = recipe_sources(recipe, tmp_path / "bench")
    vset = source.load()
    assert source.name == "mine" and vset.num_pairs == 20
    with pytest.raises(UserError, match="neither a built-in set .* nor an existing"):
        lfw2 = load_recipe(_image_folder_recipe(tiny_recipe, tmp_path, ["lfw2"]))
        recipe_sources(lfw2, tmp_path)


def test_one_class_pairs_file_is_refused_for_training(tmp_path: Path, tiny_recipe: dict) -> None:
    _faces(tmp_path / "faces")
    lines = [(a, b, 1) for a, b, label in _mixed_pairs() if label]
    pairs = _pairs_file(tmp_path / "faces" / "same.txt", lines * 2)
    recipe = load_recipe(_image_folder_recipe(tiny_recipe, tmp_path, [str(pairs)]))
    with pytest.raises(UserError, match="every pair of set 'same' is matched"):
        train(recipe, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_one_class_pairs_file_warns_and_reports_no_accuracy(
    untrained_run: Path, tmp_path: Path, eqm
) -> None:
    run = untrained_run
    _faces(tmp_path / "faces")
    lines = [(a, b, 1) for a, b, label in _mixed_pairs() if label]
    pairs = _pairs_file(tmp_path / "faces" / "same.txt", lines * 2)
    result = eqm("eval", str(run), "--pairs", str(pairs))
    assert result.exit_code == 0, result.output
    assert "100.00" not in result.stdout and "—" in result.stdout
    warning = result.stderr.replace("\n", " ")
    assert "Warning" in warning and "all 20 pairs are matched" in warning
    written = json.loads((run / "eval" / "same.json").read_text())
    assert written["accuracy"] is None and written["auc"] is None and written["eer"] is None
    assert "matched" in written["warning"]


def test_single_class_verify_reports_no_accuracy() -> None:
    result = verify(np.linspace(0.1, 0.9, 30), np.zeros(30, bool))
    assert result.accuracy is None and result.threshold is None and result.auc is None
    assert result.fold_accuracies == [] and "mismatched" in (result.warning or "")
