"""`eqm eval` end to end on a tiny checkpoint: JSON output, eval files, errors (exit 2)."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from eqmcli.cli import app
from tests.conftest import TINY_RECIPE


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory with checkpoints/last.pt of an (untrained) tiny 24 px model."""
    return make_checkpoint_run(tmp_path)


def make_checkpoint_run(tmp_path: Path) -> Path:
    """`tmp_path/run` with checkpoints/last.pt of an (untrained) tiny 24 px model."""
    from eqmcli.backbones import build_backbone
    from eqmcli.losses import build_head
    from eqmcli.run.checkpoint import save_checkpoint
    from eqmcli.run.recipe import recipe_from_mapping

    recipe = recipe_from_mapping(json.loads(json.dumps(TINY_RECIPE)))
    torch.manual_seed(0)
    backbone = build_backbone("tiny", embedding_dim=16, input_size=(24, 24))
    head = build_head(
        recipe.loss.name, num_classes=8, embedding_dim=16, **recipe.loss.hyperparameters()
    )
    run = tmp_path / "run"
    (run / "recipe.yaml").parent.mkdir(parents=True)
    (run / "recipe.yaml").write_text(recipe.to_yaml())
    state = {
        "backbone": backbone.state_dict(),
        "head": head.state_dict(),
        "recipe": recipe.to_yaml(),
        "input_size": [24, 24],
        "epoch": 2,
        "step": 10,
        "best_accuracy": 0.0,
    }
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    return run


def _jpeg(color: tuple[int, int, int], size: int = 32) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_bin(path: Path, pairs: int = 20) -> None:
    bins = [_jpeg(((13 * i) % 256, (71 * i) % 256, 90)) for i in range(2 * pairs)]
    issame = [k % 2 == 0 for k in range(pairs)]
    path.write_bytes(pickle.dumps((bins, issame), protocol=2))


def _invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def test_eval_recipe_sets_json(run_dir: Path) -> None:
    result = _invoke(str(run_dir), "--json", "--batch-size", "32")
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
    written = json.loads((run_dir / "eval" / "synthetic.json").read_text())
    assert written == synthetic


def test_eval_bin_pairs_table_and_resize_note(run_dir: Path, tmp_path: Path) -> None:
    data_root = tmp_path / "bench"
    data_root.mkdir()
    _write_bin(data_root / "lfw.bin")
    from PIL import Image

    imgs = tmp_path / "mine"
    imgs.mkdir()
    for i in range(4):
        Image.new("RGB", (24 + 8 * (i % 2), 24), (60 * i, 20, 200)).save(imgs / f"{i}.png")
    (tmp_path / "mine.txt").write_text(
        "\n".join(f"{i % 4}.png {(i + 1) % 4}.png {i % 2}" for i in range(10)) + "\n"
    )
    result = _invoke(
        str(run_dir / "checkpoints" / "last.pt"),
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
    lfw = json.loads((run_dir / "eval" / "lfw.json").read_text())
    assert lfw["pairs"] == 20 and lfw["flip"] is False and "accuracy_noflip" not in lfw
    assert lfw["resized_from"] == [32, 32] and lfw["input_size"] == [24, 24]
    assert (run_dir / "eval" / "mine.json").is_file()


def test_missing_benchmark_names_the_path(run_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _invoke(str(run_dir), "--cfp-fp", "--data-root", str(empty))
    assert result.exit_code == 2
    assert str(empty / "cfp_fp.bin") in result.stderr.replace("\n", "")
    result = _invoke(str(run_dir), "--lfw", "--data-root", str(empty))
    message = result.stderr.replace("\n", "")
    assert result.exit_code == 2 and str(empty / "lfw.bin") in message and "pairs.txt" in message
    env = {k: v for k, v in os.environ.items() if k != "EQM_DATA_ROOT"}
    result = CliRunner(env=env).invoke(app, ["eval", str(run_dir), "--calfw"])
    assert result.exit_code == 2 and "EQM_DATA_ROOT" in result.stderr


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_bin_exit_2_and_runs_nothing(run_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    root = tmp_path / "evil"
    root.mkdir()
    (root / "agedb_30.bin").write_bytes(pickle.dumps(([_Payload(marker)], [True]), protocol=2))
    result = _invoke(str(run_dir), "--agedb-30", "--data-root", str(root), "--json")
    assert result.exit_code == 2
    assert "system" in result.stderr and "refusing" in result.stderr.replace("\n", " ")
    assert result.stdout == ""
    assert not marker.exists()


def test_truncated_bin_exit_2(run_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "bench"
    root.mkdir()
    _write_bin(root / "cplfw.bin")
    data = (root / "cplfw.bin").read_bytes()
    (root / "cplfw.bin").write_bytes(data[:-100])
    result = _invoke(str(run_dir), "--cplfw", "--data-root", str(root))
    assert result.exit_code == 2 and "truncated or corrupt" in result.stderr.replace("\n", " ")


def test_data_root_from_recipe(run_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "bench"
    root.mkdir()
    _write_bin(root / "calfw.bin")
    from eqmcli.evaluation.evaluate import resolve_data_root
    from eqmcli.run.recipe import recipe_from_mapping

    recipe = recipe_from_mapping(
        {**yaml.safe_load(yaml.safe_dump(TINY_RECIPE)), "eval": {"data_root": str(root)}}
    )
    assert resolve_data_root(None, recipe) == root
    assert resolve_data_root(tmp_path, recipe) == tmp_path
