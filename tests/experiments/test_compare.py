"""`eqm compare` and the sweep figure on fake run directories written in the published layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fake_runs import fake_run

from eqmcli.errors import UserError
from eqmcli.evaluation.pair_outcomes import pair_correctness
from eqmcli.experiments.compare import compare, mcnemar_exact, mcnemar_runs, welch_interval
from eqmcli.plotting.sweeps import draw_sweeps, figure_sweep


def _table(both: int, only_a: int, only_b: int, wrong: int) -> tuple[np.ndarray, ...]:
    """Per-pair correctness of runs a and b with the given 2x2 counts (20 pairs)."""
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * wrong, dtype=bool)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * wrong, dtype=bool)
    issame = np.arange(a.size) % 2 == 0
    return a, b, issame


# --------------------------------------------------------------------- Welch CI
def test_welch_interval_matches_a_hand_computation():
    a, b = [0.90, 0.92, 0.94], [0.93, 0.96, 0.95, 0.97]
    # by hand: means 0.92 and 0.9525; variances (ddof 1) 4e-4 and 2.9167e-4;
    # se^2 = 4e-4/3 + 2.9167e-4/4 = 2.0625e-4; Welch df = se^4 / (1.3333e-4^2/2 +
    # 7.2917e-5^2/3) = 3.990; t(0.975, 3.99) = 2.7786 (t tables: 2.7764 at df 4)
    result = welch_interval(a, b)
    se = math.sqrt(2.0625e-4)
    assert result.difference == pytest.approx(0.0325)
    assert result.df == pytest.approx(3.990, abs=1e-3)
    assert result.low == pytest.approx(0.0325 - 2.7786 * se, abs=2e-4)
    assert result.high == pytest.approx(0.0325 + 2.7786 * se, abs=2e-4)
    assert result.t == pytest.approx(0.0325 / se)
    from scipy import stats

    assert result.p_value == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)


def test_welch_without_spread_gives_no_interval():
    result = welch_interval([0.9, 0.9], [0.95, 0.95])
    assert result.difference == pytest.approx(0.05) and result.p_value is None


# ---------------------------------------------------------------------- McNemar
def test_mcnemar_exact_matches_a_hand_computed_table():
    # discordant 6 vs 1: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128 = 0.125
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    from scipy import stats

    assert mcnemar_exact(40, 22) == pytest.approx(stats.binomtest(22, 62, 0.5).pvalue)


def test_mcnemar_on_runs_uses_the_saved_per_pair_scores(tmp_path):
    a, b, issame = _table(both=10, only_a=6, only_b=1, wrong=3)
    run_a = fake_run(tmp_path / "a", 0, correct=a, issame=issame)
    run_b = fake_run(tmp_path / "b", 0, correct=b, issame=issame)
    correct, truth = pair_correctness(run_a / "eval", "synthetic")
    np.testing.assert_array_equal(correct, a)
    np.testing.assert_array_equal(truth, issame)
    result = mcnemar_runs(run_a / "eval", run_b / "eval", "synthetic")
    assert (result.both_correct, result.only_a, result.only_b, result.both_wrong) == (10, 6, 1, 3)
    assert result.p_value == pytest.approx(0.125) and result.pairs == 20


def test_mcnemar_refuses_other_pairs_missing_or_mismatched_scores(tmp_path):
    a, b, issame = _table(10, 6, 1, 3)
    run_a = fake_run(tmp_path / "a", 0, correct=a, issame=issame)
    run_c = fake_run(tmp_path / "c", 0, correct=b, issame=~issame)
    with pytest.raises(UserError, match="not verified on the same synthetic pairs"):
        mcnemar_runs(run_a / "eval", run_c / "eval", "synthetic")
    bare = fake_run(tmp_path / "bare", 0.9)
    with pytest.raises(UserError, match="pairs.npz is missing.*eqm eval"):
        pair_correctness(bare / "eval", "synthetic")
    result = json.loads((run_a / "eval" / "synthetic.json").read_text())
    result["fold_accuracies"] = [0.1, 0.2]
    (run_a / "eval" / "synthetic.json").write_text(json.dumps(result))
    with pytest.raises(UserError, match="different evaluations"):
        pair_correctness(run_a / "eval", "synthetic")


# ------------------------------------------------------------- groups and CLI
def _fake_sweep(folder: Path, accuracies: dict[str, list[float]],
                grid: dict | None = None) -> Path:
    members, configs = [], []
    for config, values in accuracies.items():
        t1 = float(config.split("=")[1])
        stats = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)),
                 "n": len(values), "values": values}
        configs.append({"config": config, "assignments": {"loss.t1": t1, "loss.scale": 30},
                        "runs": [], "metrics": {"accuracy": stats}})
        for seed, value in enumerate(values):
            name = f"{config},seed={seed}"
            fake_run(folder / name, value, closed_few=value - 0.1)
            members.append({"name": name, "config": config, "status": "done"})
    members.append({"name": "t1=0.9,seed=0", "config": "t1=0.9", "status": "failed"})
    sweep = {"grid": grid or {"loss.t1": [0.4, 0.6], "loss.scale": [30]}, "seeds": 3,
             "members": members, "configs": configs}
    (folder / "sweep.json").write_text(json.dumps(sweep))
    return folder


def test_compare_sweep_configs_with_welch_and_single_runs_with_a_note(tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep", {"t1=0.4": [0.90, 0.92, 0.94],
                                             "t1=0.6": [0.93, 0.96, 0.95]})
    single = fake_run(tmp_path / "single", 0.97)
    report = compare([sweep, single], "accuracy")
    names = [g.name for g in report.groups]
    assert names == [f"{sweep}:t1=0.4", f"{sweep}:t1=0.6", f"{sweep}:t1=0.9", str(single)]
    first, failed, lone = report.comparisons
    assert first.welch is not None and first.welch.difference == pytest.approx(0.08 / 3)
    assert "missing" in failed.note, "a config without finished runs has no metric"
    assert lone.welch is None and lone.mcnemar is None and "two runs" in lone.note
    few = compare([sweep], "closed_accuracy_few").comparisons[0]
    assert few.welch.difference == pytest.approx(0.08 / 3)
    with pytest.raises(UserError, match="no run has the metric 'nope'"):
        compare([sweep], "nope")


def test_cli_compare_two_runs_prints_mcnemar_and_json(tmp_path, eqm):

    a, b, issame = _table(10, 6, 1, 3)
    run_a = fake_run(tmp_path / "a", 0, correct=a, issame=issame)
    run_b = fake_run(tmp_path / "b", 0, correct=b, issame=issame)
    result = eqm("compare", str(run_a), str(run_b))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the sentence is wrapped at the terminal width
    assert "McNemar" in text and "p = 0.125" in text
    result = eqm("compare", str(run_a), str(run_b), "--json")
    payload = json.loads(result.output)
    assert payload["comparisons"][0]["mcnemar"]["only_a"] == 6
    result = eqm("compare", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_sweep_figure_draws_metric_against_the_swept_key(tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep", {"t1=0.4": [0.90, 0.92, 0.94],
                                             "t1=0.6": [0.93, 0.96, 0.95]})
    fig = figure_sweep(sweep, ["accuracy"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "loss.t1" and "%" in ax.get_ylabel()
    line = ax.lines[0]
    np.testing.assert_allclose(np.asarray(line.get_xdata(), dtype=float), [0.4, 0.6])
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), [92.0, 94.6667],
                               atol=1e-3)
    written = draw_sweeps([sweep], ["accuracy"], None, tmp_path / "figs")
    assert [p.name for p in written[f"sweep {sweep}"]] == ["sweep-accuracy-vs-loss.t1.png",
                                                           "sweep-accuracy-vs-loss.t1.pdf"]
    assert (tmp_path / "figs" / "sweep-accuracy-vs-loss.t1.png").stat().st_size > 1000
    with pytest.raises(UserError, match="is not swept here"):
        figure_sweep(sweep, ["accuracy"], "loss.scale2")
    flat = _fake_sweep(tmp_path / "flat", {"t1=0.4": [0.9, 0.91]}, grid={"loss.t1": [0.4]})
    with pytest.raises(UserError, match="varies no parameter"):
        draw_sweeps([flat], ["accuracy"], None, None)


def test_sweep_figure_labels_angles_in_degrees_and_one_seed_without_a_spread(tmp_path):
    folder = tmp_path / "scope"
    stats = {"mean": 66.0, "std": None, "n": 1, "values": [66.0]}
    configs = [{"config": f"t1={t1}", "assignments": {"loss.t1": t1}, "runs": [],
                "metrics": {"scope_mean_all": stats, "margin_cv_few": {**stats, "mean": 0.05}}}
               for t1 in (0.4, 0.6)]
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps(
        {"grid": {"loss.t1": [0.4, 0.6]}, "seeds": 1, "members": [], "configs": configs}))
    fig = figure_sweep(folder, ["scope_mean_all", "margin_cv_few"])
    scope, cv = fig.axes
    assert scope.get_ylabel() == "scope_mean_all (deg)"
    assert cv.get_ylabel() == "margin_cv_few"  # a ratio: no unit
    title = fig._suptitle.get_text()
    assert "one seed" in title and "±" not in title


def test_plot_draws_several_metrics_of_a_loss_by_scale_sweep_as_panels_of_one_figure(tmp_path, eqm):

    folder = tmp_path / "scale"
    configs = []
    for loss in ("eqm", "am"):
        for scale in (16, 64):
            values = [0.9, 0.92] if loss == "eqm" else [0.8, 0.84]
            stats = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)),
                     "n": 2, "values": values}
            tar = {**stats, "mean": stats["mean"] - 0.2}
            configs.append({"config": f"name={loss},scale={scale}",
                            "assignments": {"loss.name": loss, "loss.scale": scale},
                            "runs": [], "metrics": {"accuracy": stats, "tar@far=1e-03": tar}})
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({
        "grid": {"loss.name": ["eqm", "am"], "loss.scale": [16, 64]}, "seeds": 2,
        "members": [], "configs": configs}))
    fig = figure_sweep(folder, ["accuracy", "tar@far=1e-03"])
    accuracy, tar = fig.axes
    assert accuracy.get_xlabel() == tar.get_xlabel() == "loss.scale"  # numeric key first
    legend = [text.get_text() for text in accuracy.get_legend().get_texts()]
    assert legend == ["loss.name=eqm", "loss.name=am"]
    np.testing.assert_allclose(np.asarray(tar.lines[0].get_ydata(), dtype=float), [71.0, 71.0])
    result = eqm("plot", str(folder), "--metric", "accuracy",
                 "--metric", "tar@far=1e-03", "--out", str(tmp_path / "f"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f" / "sweep-accuracy+tar@far=1e-03-vs-loss.scale.png").is_file()
