"""Figures drawn headless from synthetic run files: they exist and carry the right series."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eqmcli.analysis.statistics import per_class_statistics, summarize
from eqmcli.errors import UserError
from eqmcli.plotting.figures import (
    figure_curves,
    figure_fig5,
    figure_fig6,
    figure_roc,
    figure_sphere,
    make_figures,
)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def make_run(
    root: Path,
    name: str,
    *,
    dim: int = 2,
    classes: int = 8,
    seed: int = 0,
    metrics: bool = True,
    evals: bool = True,
    features: bool = True,
) -> Path:
    """A run directory holding every file `eqm plot` reads (no checkpoint needed)."""
    rng = np.random.default_rng(seed)
    run = root / name
    (run / "analysis").mkdir(parents=True)
    sizes = np.geomspace(10, 400, classes).astype(np.int64)
    n_eval = np.minimum(sizes, 30)
    labels = np.repeat(np.arange(classes), n_eval)
    centers = _unit(rng.normal(size=(classes, dim)))
    emb = _unit(centers[labels] + 0.3 * rng.normal(size=(labels.size, dim)))
    table = per_class_statistics(emb, labels, centers, t1=0.8, class_sizes=sizes)
    table.to_csv(run / "analysis" / "per_class.csv")
    summary = {
        "run": str(run),
        "loss": "eqm",
        "split": "train",
        "t1": 0.8,
        **summarize(table, head_classes=80),
    }
    (run / "analysis" / "summary.json").write_text(json.dumps(summary))
    if features:
        np.savez(
            run / "analysis" / "features.npz",
            embeddings=emb,
            labels=labels,
            centers=centers,
            class_sizes=sizes,
        )
    if metrics:
        lines = [
            {"kind": "step", "epoch": 1 + s // 10, "step": s, "loss": 20 / (1 + s)}
            for s in range(1, 31)
        ]
        lines += [{"kind": "epoch", "epoch": e, "step": 10 * e, "loss": 5 / e} for e in (1, 2, 3)]
        lines += [
            {
                "kind": "eval",
                "epoch": e,
                "step": 10 * e,
                "benchmark": "synthetic",
                "accuracy": 0.6 + 0.1 * e,
            }
            for e in (1, 2, 3)
        ]
        text = "\n".join(json.dumps(x) for x in lines) + '\n{"kind": "st'  # torn last line
        (run / "metrics.jsonl").write_text(text)
    if evals:
        (run / "eval").mkdir()
        far = np.concatenate([[0.0], np.geomspace(1e-4, 1, 50)])
        for bench in ("lfw", "synthetic"):
            roc = {"far": far.tolist(), "tar": np.sqrt(far).tolist(), "threshold": []}
            result = {"benchmark": bench, "accuracy": 0.9, "auc": 0.95, "roc": roc}
            (run / "eval" / f"{bench}.json").write_text(json.dumps(result))
    return run


def test_fig5_has_margin_and_scope_rows_per_run(tmp_path):
    runs = [make_run(tmp_path, "am"), make_run(tmp_path, "eqm", seed=1)]
    fig = figure_fig5(runs)
    axes = fig.get_axes()
    assert len(axes) == 4
    assert "margin" in axes[0].get_title() and "scope" in axes[2].get_title()
    assert axes[0].get_title().startswith("am") and axes[1].get_title().startswith("eqm")
    for ax in axes:
        assert ax.get_xscale() == "log" and "(deg)" in ax.get_ylabel()
        assert any(line.get_linestyle() == "--" for line in ax.get_lines())  # head threshold
    # margin row: 1 scatter + 1 errorbar; scope row: 2 scatters + 2 errorbars
    assert len(axes[0].containers) == 1 and len(axes[2].containers) == 2


def test_fig6_bars_per_bin_and_hard_easy(tmp_path):
    runs = [make_run(tmp_path, "am"), make_run(tmp_path, "eqm", seed=1)]
    fig = figure_fig6(runs)
    left, right = fig.get_axes()
    assert len(left.containers) == 2 and len(right.containers) == 2
    assert len(right.containers[0]) == 4  # <80 hard/easy, >=80 hard/easy
    assert "%" in left.get_ylabel() and "0.8" in right.get_title()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "am" in labels and "eqm" in labels


def test_fig6_title_gives_each_runs_t1_in_the_legends_order(tmp_path):
    runs = [make_run(tmp_path, "am"), make_run(tmp_path, "eqm", seed=1)]
    for run, t1 in zip(runs, (0.5, 0.4), strict=True):
        path = run / "analysis" / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "t1": t1}))
    fig = figure_fig6(runs)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert [label for label in labels if label in ("am", "eqm")] == ["am", "eqm"]
    assert "t1: am 0.5, eqm 0.4" in fig.get_axes()[1].get_title()


def test_fig6_prefers_the_held_out_test_split(tmp_path):
    run = make_run(tmp_path, "eqm")
    assert "test split" not in figure_fig6([run])._suptitle.get_text()
    test_dir = run / "analysis" / "test"
    test_dir.mkdir()
    for name in ("per_class.csv", "summary.json"):
        text = (run / "analysis" / name).read_text()
        (test_dir / name).write_text(text.replace('"split": "train"', '"split": "test"'))
    assert "test split" in figure_fig6([run])._suptitle.get_text()


def test_curves_and_roc(tmp_path):
    runs = [make_run(tmp_path, "am"), make_run(tmp_path, "eqm", seed=1)]
    loss_ax, acc_ax = figure_curves(runs).get_axes()
    assert len(loss_ax.get_lines()) == 4 and len(acc_ax.get_lines()) == 2
    roc_axes = figure_roc(runs).get_axes()
    assert [ax.get_title() for ax in roc_axes] == ["ROC: lfw", "ROC: synthetic"]
    assert all(ax.get_xscale() == "log" and len(ax.get_lines()) == 2 for ax in roc_axes)


@pytest.mark.parametrize("dim", [2, 3])
def test_sphere_draws_every_class(tmp_path, dim):
    run = make_run(tmp_path, f"d{dim}", dim=dim)
    (ax,) = figure_sphere([run]).get_axes()
    assert len(ax.collections) >= 8 and f"{dim}-D" in ax.get_title()
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0] == "class 0 (n=10)" and len(texts) == 8


def test_make_figures_draws_what_the_files_allow_and_skips_the_rest(tmp_path):
    run = make_run(tmp_path, "am", evals=False, features=False)
    for name in ("per_class.csv", "summary.json"):
        (run / "analysis" / name).unlink()
    report = make_figures([run])
    assert set(report.written) == {"curves"}
    paths = report.written["curves"]
    assert paths == [run / "figures" / "curves.png", run / "figures" / "curves.pdf"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    assert len(report.skipped) == 4 and all("skipped, missing" in n for n in report.skipped)
    with pytest.raises(UserError, match="cannot draw roc: missing .*eval"):
        make_figures([run], ["roc"])


def test_make_figures_compares_runs_into_out(tmp_path):
    runs = [make_run(tmp_path, "am"), make_run(tmp_path, "eqm", seed=1, dim=5, features=False)]
    report = make_figures(runs, ["fig5"], tmp_path / "out")
    assert report.written["fig5"][0] == tmp_path / "out" / "fig5-am-vs-eqm.png"


def test_plot_cli_errors_exit_2(tmp_path, eqm):

    run = make_run(tmp_path, "am", features=False)
    result = eqm("plot", str(run), "--figure", "sphere")
    output = result.output + getattr(result, "stderr", "")
    assert result.exit_code == 2 and "features.npz" in output and "Traceback" not in output
    result = eqm("plot", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "run directory not found" in result.output + result.stderr
    result = eqm("plot", str(run), "-f", "fig6", "--out", str(tmp_path))
    assert result.exit_code == 0 and (tmp_path / "fig6.png").is_file()


def _add_toy_eval(run, name: str = "toy", negatives: int = 5) -> None:
    """An eval file of a 10-pair toy set: its ROC has steps of 1/5, no curve."""
    far = np.linspace(0.0, 1.0, negatives + 1)
    result = {
        "benchmark": name,
        "accuracy": 0.8,
        "negatives": negatives,
        "roc": {"far": far.tolist(), "tar": np.sqrt(far).tolist(), "threshold": []},
    }
    (run / "eval" / f"{name}.json").write_text(json.dumps(result))


def test_roc_skips_degenerate_sets_and_says_so(tmp_path, eqm):

    run = make_run(tmp_path, "am")
    _add_toy_eval(run)
    titles = [ax.get_title() for ax in figure_roc([run]).get_axes()]
    assert titles == ["ROC: lfw", "ROC: synthetic"]
    result = eqm("plot", str(run), "--figure", "roc")
    assert result.exit_code == 0, result.output
    note = result.stderr.replace("\n", " ")
    assert "skipped set 'toy'" in note and "5 mismatched pairs" in note


def test_roc_sets_option_chooses_the_panels(tmp_path, eqm):

    run = make_run(tmp_path, "am")
    _add_toy_eval(run)
    titles = [ax.get_title() for ax in figure_roc([run], sets=["synthetic"]).get_axes()]
    assert titles == ["ROC: synthetic"]
    result = eqm("plot", str(run), "-f", "roc", "--sets", "lfw")
    assert result.exit_code == 0, result.output
    assert (run / "figures" / "roc.png").is_file()
    result = eqm("plot", str(run), "-f", "roc", "--sets", "cfp_fp")
    assert result.exit_code == 2 and "cfp_fp" in result.stderr and "lfw" in result.stderr
    result = eqm("plot", str(run), "-f", "roc", "--sets", "toy")
    assert result.exit_code == 2 and "5 mismatched pairs" in result.stderr.replace("\n", " ")
    result = eqm("plot", str(run), "-f", "curves", "--sets", "lfw")
    assert result.exit_code == 2 and "--figure roc" in result.stderr
