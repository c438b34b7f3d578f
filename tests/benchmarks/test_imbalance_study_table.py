"""benchmarks/imbalance_study_table.py and the statistics behind the study page's claims."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fake_runs import fake_run

from eqmcli.experiments.compare import holm_adjust, welch_contrast, welch_contrast_of_moments

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "imbalance_study_table.py"
PASS2 = ROOT / "docs" / "data" / "imbalance-pass2-summary.csv"


def test_holm_adjust_matches_a_hand_computation_in_the_given_order():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> kept at 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_welch_from_moments_equals_welch_from_values():
    a, b = [0.90, 0.92, 0.94], [0.93, 0.96, 0.95, 0.97]
    from_values = welch_contrast([(-1.0, a), (1.0, b)])
    from_moments = welch_contrast_of_moments([(-1.0, 0.92, 4e-4, 3), (1.0, 0.9525, 2.9167e-4, 4)])
    assert from_moments.difference == pytest.approx(from_values.difference)
    assert from_moments.df == pytest.approx(from_values.df, rel=1e-4)
    assert from_moments.low == pytest.approx(from_values.low, rel=1e-4)
    assert from_moments.p_value == pytest.approx(from_values.p_value, rel=1e-3)


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_the_page_s_welch_tests_and_their_holm_adjustment_come_from_the_kept_summary():
    done = _run("--welch-from-summary", str(PASS2))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "pp" in line
            or line.startswith("| margin") or line.startswith("| scope")]
    assert len(rows) == 24  # 8 metrics x 3 EqM configs against AM
    first = next(r for r in rows if r.startswith("| accuracy | EqM (0.4"))
    assert "-1.10 pp [-1.40, -0.80]" in first  # the page's first Welch interval
    holm = [float(r.rstrip(" |").rsplit("|", 1)[1]) for r in rows]
    assert sum(p < 0.05 for p in holm) == 8  # what docs/imbalance-study.md says survives


def test_per_seed_rows_are_written_for_every_run_and_metric(tmp_path):
    runs = [fake_run(tmp_path / f"seed={s}", a, closed_few=c)
            for s, (a, c) in enumerate([(0.97, 0.9), (0.975, None), (0.972, 0.95)])]
    report = {"groups": [{"name": "am", "runs": [str(r) for r in runs],
                          "metrics": {"accuracy": {"values": [0.97, 0.975, 0.972]}}}]}
    out = tmp_path / "per-seed.csv"
    done = _run("--per-seed", str(out), stdin=json.dumps(report))
    assert done.returncode == 0, done.stderr
    assert "| am | 3 |" in done.stdout
    rows = [(r["run"], r["metric"], float(r["value"]))
            for r in csv.DictReader(io.StringIO(out.read_text()))]
    accuracy = [row for row in rows if row[1] == "accuracy"]
    few = [row for row in rows if row[1] == "closed_accuracy_few"]
    assert accuracy == [(str(runs[0]), "accuracy", 0.97), (str(runs[1]), "accuracy", 0.975),
                        (str(runs[2]), "accuracy", 0.972)]
    # the second seed has no closed-set result: its neighbours' values stay with their runs
    assert few == [(str(runs[0]), "closed_accuracy_few", 0.9),
                   (str(runs[2]), "closed_accuracy_few", 0.95)]


def test_the_kept_pass1_sweep_holds_the_page_s_table_values_and_plots(tmp_path, eqm):


    folder = ROOT / "docs" / "data" / "imbalance-pass1-stage-a"
    page = (ROOT / "docs" / "imbalance-study.md").read_text()
    for config in json.loads((folder / "sweep.json").read_text())["configs"]:
        a = config["assignments"]
        accuracy = 100 * config["metrics"]["accuracy"]["mean"]
        row = next(line for line in page.splitlines()
                   if line.startswith(f"| {a['loss.t1']} | 0.1 | {a['loss.scale']} |"))
        cells = [c.strip() for c in row.split("|")]
        assert cells[4].startswith(f"{accuracy:.2f}")  # verification %
        assert cells[11] == f"{config['metrics']['scope_mean_all']['mean']:.1f}"  # scope °
    result = eqm("plot", str(folder), "--metric", "scope_mean_all",
                 "--x", "loss.t1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sweep-scope_mean_all-vs-loss.t1.png").is_file()
