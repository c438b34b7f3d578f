"""Where `eqm analyze` writes: another checkpoint of a run (best.pt) gets its own
`analysis/best/`, so it never replaces last.pt's tables, and `eqm compare` reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eqmcli.cli import app
from tests.evaluation.test_eval_cli import make_checkpoint_run


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_checkpoint_run(tmp_path)


def _eqm(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _analyze(model: Path):
    result = _eqm("analyze", model, "--head-classes", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return result


def test_best_checkpoint_analysis_goes_to_its_own_folder(run_dir: Path) -> None:
    checkpoints = run_dir / "checkpoints"
    shutil.copy(checkpoints / "last.pt", checkpoints / "best.pt")
    _analyze(run_dir)
    last_table = (run_dir / "analysis" / "per_class.csv").read_bytes()
    last_summary = json.loads((run_dir / "analysis" / "summary.json").read_text())
    _analyze(checkpoints / "best.pt")
    best = json.loads((run_dir / "analysis" / "best" / "summary.json").read_text())
    assert Path(best["checkpoint"]).name == "best.pt"
    assert (run_dir / "analysis" / "best" / "per_class.csv").is_file()
    assert (run_dir / "analysis" / "per_class.csv").read_bytes() == last_table, "not replaced"
    assert json.loads((run_dir / "analysis" / "summary.json").read_text()) == last_summary


def test_compare_reads_each_checkpoints_own_analysis(run_dir: Path) -> None:
    checkpoints = run_dir / "checkpoints"
    shutil.copy(checkpoints / "last.pt", checkpoints / "best.pt")
    for model in (run_dir, checkpoints / "best.pt"):
        assert _eqm("eval", model, "--no-flip", "--device", "cpu").exit_code == 0
        _analyze(model)
    result = _eqm("compare", checkpoints / "best.pt", run_dir, "--metric", "scope_mean_all",
                  "--json")
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)["groups"]
    assert all(g["checkpoints"] for g in groups)
    assert [g["checkpoints"][0].split()[0] for g in groups] == ["best.pt", "last.pt"]


def test_a_checkpoint_named_test_is_refused(run_dir: Path) -> None:
    shutil.copy(run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "test.pt")
    result = _eqm("analyze", run_dir / "checkpoints" / "test.pt", "--device", "cpu")
    assert result.exit_code == 2 and "rename it" in result.output
