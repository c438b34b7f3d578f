"""The per-class analysis: checked against brute-force numpy loops; run-level errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import eqmcli.analysis.study as study
from eqmcli.analysis.statistics import (
    PerClassTable,
    nearest_centers,
    per_class_statistics,
    size_bin_edges,
    summarize,
)
from eqmcli.analysis.study import analyze_trained, sample_per_class
from eqmcli.data import TrainData
from eqmcli.errors import UserError
from eqmcli.run.recipe import SyntheticSource


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _random_problem(n=400, c=17, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d))
    labels = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    emb = _unit(centers)[labels] + 0.6 * rng.normal(size=(n, d))
    return emb.astype(np.float32), labels, centers.astype(np.float32)


def _brute_force(emb, labels, centers, t1):
    """Plain loops over classes and pairs of centres (degrees)."""
    x, w = _unit(emb.astype(np.float64)), _unit(centers.astype(np.float64))
    c = w.shape[0]
    out = {
        k: []
        for k in (
            "scope_max",
            "scope_p95",
            "scope_mean",
            "margin",
            "nearest",
            "accuracy",
            "hard_fraction",
        )
    }
    for k in range(c):
        xs = x[labels == k]
        ang = np.degrees(np.arccos(np.clip(xs @ w[k], -1, 1)))
        out["scope_max"].append(ang.max())
        out["scope_p95"].append(np.percentile(ang, 95))
        out["scope_mean"].append(ang.mean())
        best, best_j = -2.0, -1
        for j in range(c):
            if j != k and w[k] @ w[j] > best:
                best, best_j = w[k] @ w[j], j
        out["margin"].append(np.degrees(np.arccos(np.clip(best, -1, 1))))
        out["nearest"].append(best_j)
        out["accuracy"].append(np.mean([np.argmax(w @ xi) == k for xi in xs]))
        out["hard_fraction"].append(np.mean(xs @ w[k] < t1))
    return {k: np.array(v) for k, v in out.items()}


def test_per_class_statistics_match_brute_force():
    emb, labels, centers = _random_problem()
    table = per_class_statistics(emb, labels, centers, t1=0.5, chunk_size=5)
    ref = _brute_force(emb, labels, centers, 0.5)
    for key in ("scope_max", "scope_p95", "scope_mean", "margin", "accuracy", "hard_fraction"):
        np.testing.assert_allclose(getattr(table, key), ref[key], atol=1e-3, err_msg=key)
    np.testing.assert_array_equal(table.nearest_class, ref["nearest"])
    np.testing.assert_array_equal(table.n_samples, np.bincount(labels, minlength=17))
    np.testing.assert_array_equal(table.hard_count + table.easy_count, table.n_samples)
    np.testing.assert_array_equal(
        table.hard_correct + table.easy_correct, np.round(table.accuracy * table.n_samples)
    )
    assert 0 < table.accuracy.mean() < 1 and 0 < table.hard_fraction.mean() < 1


@pytest.mark.parametrize("chunk", [1, 3, 7, 13, 64])
def test_chunked_nearest_centers_equal_dense(chunk):
    rng = np.random.default_rng(chunk)
    centers = rng.normal(size=(29, 5)).astype(np.float32)
    w = _unit(centers.astype(np.float64))
    dense = w @ w.T
    np.fill_diagonal(dense, -np.inf)
    margin, nearest = nearest_centers(centers, chunk_size=chunk)
    np.testing.assert_array_equal(nearest, dense.argmax(axis=1))
    np.testing.assert_allclose(margin, np.degrees(np.arccos(dense.max(axis=1))), atol=1e-6)


def test_single_class_has_no_margin():
    margin, nearest = nearest_centers(np.ones((1, 4), dtype=np.float32))
    assert np.isnan(margin[0]) and nearest[0] == -1


def test_empty_class_is_a_user_error():
    emb, labels, centers = _random_problem(n=50, c=5)
    labels = np.where(labels == 3, 0, labels)
    with pytest.raises(UserError, match="empty class: class 3 has no images"):
        per_class_statistics(emb, labels, centers, t1=0.5)


def test_summary_groups_and_bins():
    emb, labels, centers = _random_problem(n=200, c=10)
    sizes = np.array([5, 12, 30, 79, 80, 81, 150, 300, 700, 40])
    table = per_class_statistics(emb, labels, centers, t1=0.3, class_sizes=sizes)
    summary = summarize(table, head_classes=80)
    groups = summary["groups"]
    assert groups["few"]["classes"] == 5 and groups["many"]["classes"] == 5
    assert groups["few"]["label"] == "few (<80 images)"
    assert sum(b["classes"] for b in summary["bins"]) == 10
    assert all(b["high"] <= 80 or b["low"] >= 80 for b in summary["bins"])
    margins = table.margin[sizes < 80]
    assert groups["few"]["margin_deg"]["cv"] == pytest.approx(margins.std() / margins.mean())
    assert 80 in size_bin_edges(sizes, 80)
    assert size_bin_edges(sizes, 80)[0] <= 5 and size_bin_edges(sizes, 80)[-1] > 700


def test_csv_round_trip(tmp_path):
    emb, labels, centers = _random_problem(n=60, c=6)
    table = per_class_statistics(emb, labels, centers, t1=0.5)
    table.to_csv(tmp_path / "t.csv")
    back = PerClassTable.from_csv(tmp_path / "t.csv")
    for name in PerClassTable.columns():
        np.testing.assert_allclose(getattr(back, name), getattr(table, name), atol=1e-5)


def test_sample_per_class_is_reproducible_and_bounded():
    labels = np.repeat(np.arange(4), [3, 10, 1, 25])
    a = sample_per_class(labels, 5, seed=1)
    assert np.array_equal(a, sample_per_class(labels, 5, seed=1))
    assert np.bincount(labels[a]).tolist() == [3, 5, 1, 5]
    assert not np.array_equal(a, sample_per_class(labels, 5, seed=2))


# ------------------------------------------------------------------ run-level
class _Images(torch.utils.data.Dataset):
    """uint8 images whose first pixel encodes the class, with a `labels` attribute."""

    def __init__(self, labels: np.ndarray, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = np.asarray(labels)
        self.images = torch.randint(0, 256, (len(labels), 3, 8, 8), dtype=torch.uint8, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _fake_extract(backbone, images, *, batch_size, device, input_size, flip, precision, progress):
    x = torch.stack([images[i][0] for i in range(len(images))]).float() / 127.5 - 1
    feats = torch.nn.functional.normalize(backbone(x), dim=1)
    return SimpleNamespace(plain=feats, flip=feats if flip else None)


def _stand_in_run(tmp_path, *, dim=3, classes=5, head=True, loss="eqm", test=True):
    torch.manual_seed(0)
    sizes = np.array([3, 4, 6, 9, 12][:classes])
    labels = np.repeat(np.arange(classes), sizes)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, dim))
    head_module = SimpleNamespace(
        weight=nn.Parameter(torch.randn(classes, dim)),
        name=loss,
        hyperparameters={"t1": 0.4} if loss == "eqm" else {},
    )
    recipe = SimpleNamespace(
        loss=SimpleNamespace(name=loss, t1=0.4 if loss == "eqm" else None),
        data=SimpleNamespace(train=SyntheticSource()),
    )
    trained = SimpleNamespace(
        backbone=backbone,
        head=head_module if head else None,
        recipe=recipe,
        run_dir=tmp_path,
        checkpoint_path=tmp_path / "checkpoints/last.pt",
        input_size=(8, 8),
    )
    data = TrainData(
        dataset=_Images(labels),
        num_classes=classes,
        image_size=(8, 8),
        class_sizes=sizes,
        test_dataset=_Images(np.arange(classes).repeat(2), 1) if test else None,
    )
    return trained, data


@pytest.fixture
def fake_extract(monkeypatch):
    monkeypatch.setattr(study, "extract_embeddings", _fake_extract)


def test_analyze_trained_writes_files_consistent_with_the_core(tmp_path, fake_extract):
    trained, data = _stand_in_run(tmp_path)
    result = analyze_trained(trained, data, max_per_class=5, device="cpu", progress=False)
    back = PerClassTable.from_csv(tmp_path / "analysis" / "per_class.csv")
    np.testing.assert_array_equal(back.n_images, data.class_sizes)
    np.testing.assert_array_equal(back.n_samples, np.minimum(data.class_sizes, 5))
    summary = json.loads((tmp_path / "analysis" / "summary.json").read_text())
    assert summary["t1"] == 0.4 and summary["t1_source"] == "the run's eqm loss"
    assert summary["groups"]["few"]["classes"] == 5 and summary["flip"] is False
    with np.load(tmp_path / "analysis" / "features.npz") as f:
        ref = per_class_statistics(f["embeddings"], f["labels"], f["centers"], t1=0.4)
        assert f["embeddings"].shape == (int(back.n_samples.sum()), 3)
    np.testing.assert_allclose(back.scope_max, ref.scope_max, atol=1e-4)
    assert result.features_path is not None


def test_t1_sources_and_test_split(tmp_path, fake_extract):
    trained, data = _stand_in_run(tmp_path, loss="am", dim=8)
    train_split = analyze_trained(trained, data, device="cpu", progress=False)
    result = analyze_trained(trained, data, split="test", device="cpu", progress=False)
    assert result.summary_path.parent.name == "test", "the test split gets its own folder"
    assert train_split.summary_path.is_file(), "the training-split files are kept"
    assert json.loads(train_split.summary_path.read_text())["split"] == "train"
    assert result.summary["t1"] == 0.5 and "default" in result.summary["t1_source"]
    assert result.summary["samples"] == 10 and result.features_path is None
    result = analyze_trained(trained, data, t1=0.2, device="cpu", progress=False)
    assert result.summary["t1"] == 0.2 and result.summary["t1_source"] == "--t1"


@pytest.mark.parametrize(
    ("kwargs", "split", "message"),
    [
        ({"head": False}, "train", "has no classification head"),
        ({"test": False}, "test", "has no test split"),
    ],
)
def test_analyze_trained_user_errors(tmp_path, fake_extract, kwargs, split, message):
    trained, data = _stand_in_run(tmp_path, **kwargs)
    with pytest.raises(UserError, match=message):
        analyze_trained(trained, data, split=split, device="cpu", progress=False)


@pytest.fixture
def cli_run(tmp_path, monkeypatch, fake_extract):
    """A run directory whose loading is served by stand-ins (patched loading / data)."""
    state = {}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)

    def load_trained(path, device="cpu"):
        return state["trained"]

    def build_train_data(source):
        state["source"] = source
        return state["data"]

    monkeypatch.setattr(study, "build_train_data", build_train_data)
    monkeypatch.setattr(study, "load_trained", load_trained)

    def set_run(**kwargs):
        state["trained"], state["data"] = _stand_in_run(run, **kwargs)
        return run, state

    return set_run


def test_cli_bad_run_dir_exits_2(tmp_path, eqm):
    result = eqm("analyze", str(tmp_path / "missing"))
    assert result.exit_code == 2, result.output
    assert "run directory or checkpoint not found" in result.output
    assert "Traceback" not in result.output


def test_cli_empty_class_and_no_head_exit_2(cli_run, eqm):
    run, state = cli_run()
    state["data"].class_sizes = np.array([3, 4, 0, 9, 12])
    result = eqm("analyze", str(run), "--device", "cpu")
    assert result.exit_code == 2 and "empty class: class 2 has no images" in result.output
    run, state = cli_run(head=False)
    result = eqm("analyze", str(run), "--device", "cpu")
    assert result.exit_code == 2 and "no classification head" in result.output


def test_cli_json_prints_only_the_summary(cli_run, eqm):
    run, _ = cli_run()
    result = eqm("analyze", str(run), "--device", "cpu", "--json", "--head-classes", "5")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["head_classes"] == 5 and summary["groups"]["many"]["classes"] == 3
    result = eqm("analyze", str(run), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert ">=80" in result.output
    assert "margin" in result.output
    assert "per_class.csv" in result.output


def test_trained_run_matches_brute_force(train_tiny):
    """End to end on a really trained tiny run (3-D embedding): CSV == brute force."""
    out = train_tiny("model.embedding_dim=3", "eval.every_epochs=0", "data.train.max_images=12")
    result = study.analyze_run(
        out, device="cpu", progress=False, head_classes=10, max_per_class=4
    )
    table = PerClassTable.from_csv(out / "analysis" / "per_class.csv")
    with np.load(out / "analysis" / "features.npz") as f:
        ref = _brute_force(f["embeddings"], f["labels"], f["centers"], result.summary["t1"])
        np.testing.assert_array_equal(table.n_images, f["class_sizes"])
    for key in ("scope_max", "scope_p95", "scope_mean", "margin", "accuracy", "hard_fraction"):
        np.testing.assert_allclose(getattr(table, key), ref[key], atol=1e-3, err_msg=key)
    np.testing.assert_array_equal(table.nearest_class, ref["nearest"])
    assert Path(result.summary_path).is_file()


# ------------------------------------------------------------ --data-root (issue 10)
def _folder_recipe(root: str):
    from eqmcli.run.recipe import recipe_from_mapping

    return recipe_from_mapping({"data": {"train": {"kind": "image-folder", "root": root,
                                                   "holdout_fraction": 0.2}}})


def test_relative_data_root_from_another_directory_names_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _folder_recipe("faces")
    with pytest.raises(UserError, match=r"faces \(relative to .*\).*--data-root DIR"):
        study.train_source(recipe, tmp_path / "run/checkpoints/last.pt")


def test_data_root_replaces_the_recorded_root(tmp_path):
    (tmp_path / "moved").mkdir()
    source = study.train_source(_folder_recipe("faces"), tmp_path / "x.pt", tmp_path / "moved")
    assert source.root == tmp_path / "moved" and source.holdout_fraction == 0.2
    with pytest.raises(UserError, match="--data-root .* is not a folder"):
        study.train_source(_folder_recipe("faces"), tmp_path / "x.pt", tmp_path / "nope")
    from eqmcli.run.recipe import Recipe

    with pytest.raises(UserError, match="synthetic"):
        study.train_source(Recipe(), tmp_path / "x.pt", tmp_path / "moved")


def test_cli_data_root_reaches_the_data_builder(cli_run, tmp_path, monkeypatch, eqm):
    run, state = cli_run()
    state["trained"].recipe = _folder_recipe("faces")
    monkeypatch.chdir(tmp_path)
    result = eqm("analyze", str(run), "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "--data-root" in result.output and "Traceback" not in result.output
    (tmp_path / "data").mkdir()
    result = eqm("analyze", str(run), "--device", "cpu", "--data-root",
                 str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    assert state["source"].root == tmp_path / "data"
