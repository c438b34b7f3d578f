"""`eqm eval` end to end on a tiny checkpoint: JSON output, eval files, errors (exit 2)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from pair_files import write_bin


def test_eval_recipe_sets_json(untrained_run: Path, eqm) -> None:
    result = eqm("eval", str(untrained_run), "--json", "--batch-size", "32")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but JSON on stdout
    assert list(data) == ["synthetic"]
    synthetic = data["synthetic"]
    assert synthetic["pairs"] == 80 and synthetic["folds"] == 10
    for key in ("accuracy", "accuracy_noflip", "accuracy_std", "auc", "eer"):
        assert 0.0 <= synthetic[key] <= 1.0
    assert synthetic["tar_at_far"]["1e-03"] is None  # 40 negatives: cannot measure FAR 1e-3
    assert len(synthetic["fold_thresholds"]) == 10  # cosine units
    assert synthetic["threshold"] == pytest.approx(sum(synthetic["fold_thresholds"]) / 10)
    written = json.loads((untrained_run / "eval" / "synthetic.json").read_text())
    assert written == synthetic


def test_eval_bin_pairs_table_and_resize_note(untrained_run: Path, tmp_path: Path, eqm) -> None:
    data_root = tmp_path / "bench"
    data_root.mkdir()
    write_bin(data_root / "lfw.bin")
    from PIL import Image

    imgs = tmp_path / "mine"
    imgs.mkdir()
    for i in range(4):
        Image.new("RGB", (24 + 8 * (i % 2), 24), (60 * i, 20, 200)).save(imgs / f"{i}.png")
    (tmp_path / "mine.txt").write_text(
        "\n".join(f"{i % 4}.png {(i + 1) % 4}.png {i % 2}" for i in range(10)) + "\n"
    )
    result = eqm("eval",
                 str(untrained_run / "checkpoints" / "last.pt"),
                 "--lfw",
                 "--data-root",
                 str(data_root),
                 "--pairs",
                 str(tmp_path / "mine.txt"),
                 "--images-root",
                 str(imgs),
                 "--no-flip",
             )
    assert result.exit_code == 0, result.output
    assert "lfw" in result.stdout and "mine" in result.stdout and "—" in result.stdout
    assert "resized" in result.stderr
    lfw = json.loads((untrained_run / "eval" / "lfw.json").read_text())
    assert lfw["pairs"] == 20 and lfw["flip"] is False and "accuracy_noflip" not in lfw
    assert lfw["resized_from"] == [32, 32] and lfw["input_size"] == [24, 24]
    assert (untrained_run / "eval" / "mine.json").is_file()


def test_missing_benchmark_names_the_path(untrained_run: Path, tmp_path: Path, eqm) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = eqm("eval", str(untrained_run), "--cfp-fp", "--data-root", str(empty))
    assert result.exit_code == 2
    assert str(empty / "cfp_fp.bin") in result.stderr.replace("\n", "")
    result = eqm("eval", str(untrained_run), "--lfw", "--data-root", str(empty))
    message = result.stderr.replace("\n", "")
    assert result.exit_code == 2 and str(empty / "lfw.bin") in message and "pairs.txt" in message
    env = {k: v for k, v in os.environ.items() if k != "EQM_DATA_ROOT"}
    result = eqm("eval", str(untrained_run), "--calfw", env=env)
    assert result.exit_code == 2 and "EQM_DATA_ROOT" in result.stderr


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_bin_exit_2_and_runs_nothing(untrained_run: Path, tmp_path: Path, eqm) -> None:
    marker = tmp_path / "pwned"
    root = tmp_path / "evil"
    root.mkdir()
    (root / "agedb_30.bin").write_bytes(pickle.dumps(([_Payload(marker)], [True]), protocol=2))
    result = eqm("eval", str(untrained_run), "--agedb-30", "--data-root", str(root), "--json")
    assert result.exit_code == 2
    assert "system" in result.stderr and "refusing" in result.stderr.replace("\n", " ")
    assert result.stdout == ""
    assert not marker.exists()


def test_truncated_bin_exit_2(untrained_run: Path, tmp_path: Path, eqm) -> None:
    root = tmp_path / "bench"
    root.mkdir()
    write_bin(root / "cplfw.bin")
    data = (root / "cplfw.bin").read_bytes()
    (root / "cplfw.bin").write_bytes(data[:-100])
    result = eqm("eval", str(untrained_run), "--cplfw", "--data-root", str(root))
    assert result.exit_code == 2 and "truncated or corrupt" in result.stderr.replace("\n", " ")


def test_data_root_from_recipe(tmp_path: Path, tiny_recipe: dict) -> None:
    root = tmp_path / "bench"
    root.mkdir()
    write_bin(root / "calfw.bin")
    from eqmcli.evaluation.evaluate import resolve_data_root
    from eqmcli.run.recipe import recipe_from_mapping

    recipe = recipe_from_mapping({**tiny_recipe, "eval": {"data_root": str(root)}})
    assert resolve_data_root(None, recipe) == root
    assert resolve_data_root(tmp_path, recipe) == tmp_path
