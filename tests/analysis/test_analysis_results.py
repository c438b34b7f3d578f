"""Where `eqm analyze` writes: another checkpoint of a run (best.pt) gets its own
`analysis/best/`, so it never replaces last.pt's tables, and `eqm compare` reads it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from typer.testing import Result


def _analyze(eqm: Callable[..., Result], model: Path) -> Result:
    result = eqm("analyze", model, "--head-classes", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return result


def test_best_checkpoint_analysis_goes_to_its_own_folder(untrained_run: Path, eqm) -> None:
    checkpoints = untrained_run / "checkpoints"
    shutil.copy(checkpoints / "last.pt", checkpoints / "best.pt")
    _analyze(eqm, untrained_run)
    last_table = (untrained_run / "analysis" / "per_class.csv").read_bytes()
    last_summary = json.loads((untrained_run / "analysis" / "summary.json").read_text())
    _analyze(eqm, checkpoints / "best.pt")
    best = json.loads((untrained_run / "analysis" / "best" / "summary.json").read_text())
    assert Path(best["checkpoint"]).name == "best.pt"
    assert (untrained_run / "analysis" / "best" / "per_class.csv").is_file()
    assert (untrained_run / "analysis" / "per_class.csv").read_bytes() == last_table, "not replaced"
    assert json.loads((untrained_run / "analysis" / "summary.json").read_text()) == last_summary


def test_compare_reads_each_checkpoints_own_analysis(untrained_run: Path, eqm) -> None:
    checkpoints = untrained_run / "checkpoints"
    shutil.copy(checkpoints / "last.pt", checkpoints / "best.pt")
    for model in (untrained_run, checkpoints / "best.pt"):
        assert eqm("eval", model, "--no-flip", "--device", "cpu").exit_code == 0
        _analyze(eqm, model)
    result = eqm("compare", checkpoints / "best.pt", untrained_run, "--metric", "scope_mean_all",
                 "--json")
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)["groups"]
    assert all(g["checkpoints"] for g in groups)
    assert [g["checkpoints"][0].split()[0] for g in groups] == ["best.pt", "last.pt"]


def test_a_checkpoint_named_test_is_refused(untrained_run: Path, eqm) -> None:
    checkpoints = untrained_run / "checkpoints"
    shutil.copy(checkpoints / "last.pt", checkpoints / "test.pt")
    result = eqm("analyze", untrained_run / "checkpoints" / "test.pt", "--device", "cpu")
    assert result.exit_code == 2 and "rename it" in result.output
