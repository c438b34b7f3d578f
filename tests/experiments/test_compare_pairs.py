"""`eqm compare` tests significance only on matching pairs (issue 20 broken 4), its other
messages (issue 20 degraded), and its output at 80 columns (issue 19 smaller items)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fake_runs import fake_run
from PIL import Image
from tiny_runs import write_untrained_run
from typer.testing import Result

from eqmcli.evaluation.pair_sets import read_bin, read_pairs, write_bin
from eqmcli.experiments.compare import compare


def _checkpoint_run(eqm: Callable[..., Result], folder: Path, data_seed: int) -> Path:
    """An untrained tiny 24 px run whose synthetic pairs come from `data_seed`."""
    write_untrained_run(folder, f"data.train.seed={data_seed}")
    result = eqm("eval", folder, "--no-flip", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return folder


def test_mcnemar_only_on_synthetic_pairs_of_the_same_data_seed(tmp_path, eqm):
    a = _checkpoint_run(eqm, tmp_path / "a", data_seed=1)
    same = _checkpoint_run(eqm, tmp_path / "same", data_seed=1)
    other = _checkpoint_run(eqm, tmp_path / "other", data_seed=2)
    fingerprint = json.loads((a / "eval" / "synthetic.json").read_text())["pairs_fingerprint"]
    with np.load(a / "eval" / "synthetic.pairs.npz") as saved:
        assert str(saved["fingerprint"]) == fingerprint
    paired, refused = compare([a, same, other]).comparisons
    assert paired.mcnemar is not None
    assert refused.mcnemar is None and "not verified on the same pairs" in refused.note
    assert "re-run 'eqm eval'" in refused.note


def test_welch_refuses_sweep_groups_verified_on_other_pairs(tmp_path):
    runs = {name: [fake_run(tmp_path / f"{name}{seed}", 0.9 + seed / 100, fingerprint=name * 20)
                   for seed in range(2)] for name in "ab"}
    for name, group in runs.items():
        sweep = tmp_path / f"sweep_{name}"
        sweep.mkdir()
        for run in group:
            run.rename(sweep / run.name)
        members = [{"name": run.name, "config": "c", "status": "done"} for run in group]
        (sweep / "sweep.json").write_text(json.dumps({"members": members}))
    (comparison,) = compare([tmp_path / "sweep_a", tmp_path / "sweep_b"]).comparisons
    assert comparison.welch is None and "not verified on the same pairs" in comparison.note
    old = [fake_run(tmp_path / f"old{seed}", 0.9, fingerprint=None) for seed in range(2)]
    (comparison,) = compare([old[0], old[1]]).comparisons
    assert comparison.mcnemar is None and "records no pair fingerprint" in comparison.note


def test_pair_fingerprint_follows_the_images_not_their_names_or_container(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    for index in range(6):
        Image.new("RGB", (16, 16), (40 * index, 10, 90)).save(images / f"{index}.jpg")
    lines = [f"{k % 6}.jpg {(k + 1) % 6}.jpg {k % 2}" for k in range(10)]
    (images / "pairs.txt").write_text("\n".join(lines) + "\n")
    from_files = read_pairs(images / "pairs.txt").fingerprint
    write_bin(None, images / "pairs.txt", tmp_path / "pairs.bin")
    assert read_bin(tmp_path / "pairs.bin").fingerprint == from_files, "make-bin keeps it"
    moved = tmp_path / "moved"
    images.rename(moved)
    assert read_pairs(moved / "pairs.txt").fingerprint == from_files
    Image.new("RGB", (16, 16), (0, 0, 0)).save(moved / "3.jpg")
    assert read_pairs(moved / "pairs.txt").fingerprint != from_files
    blobs, issame = pickle.loads((tmp_path / "pairs.bin").read_bytes())
    (tmp_path / "flipped.bin").write_bytes(pickle.dumps((blobs, [not v for v in issame])))
    assert read_bin(tmp_path / "flipped.bin").fingerprint != from_files


def test_accuracy_of_a_run_verified_only_after_training_is_found(tmp_path):
    a, b = (fake_run(tmp_path / name, 0.9) for name in "ab")
    for run in (a, b):
        (run / "metrics.jsonl").write_text('{"kind": "step", "step": 1}\n')  # no eval record
    assert [g.metrics["accuracy"] for g in compare([a, b]).groups] == [[0.9], [0.9]]
    (b / "eval" / "mine.json").write_text(json.dumps({"benchmark": "mine", "accuracy": 0.8}))
    (comparison,) = compare([a, b]).comparisons  # two sets: which one is meant?
    assert f"accuracy is missing in {b}" in comparison.note
    assert "it has results for mine, synthetic: pass --metric mine/accuracy" in comparison.note


@pytest.mark.parametrize("members", ['"x"', '[1, 2]', '[{"config": "c"}]',
                                     '[{"name": "../elsewhere"}]'])
def test_a_malformed_sweep_json_is_one_sentence(tmp_path, members, eqm):
    (tmp_path / "sweep.json").write_text(f'{{"members": {members}}}')
    result = eqm("compare", tmp_path)
    assert result.exit_code == 2 and "is not a sweep summary" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3


def test_compare_is_readable_at_80_columns(tmp_path, eqm):
    sweep = tmp_path / "a-rather-long-sweep-folder-name-as-sweeps-get" / "loss-by-scale"
    members = []
    for config in ("name=eqm,scale=32", "name=arcface,scale=64"):
        for seed in range(2):
            name = f"{config},seed={seed}"
            run = fake_run(sweep / name, 0.9 + seed / 50, closed_few=0.5 + seed / 20)
            stats = {"margin_deg": {"cv": 0.25, "mean": 30.0},
                     "scope_max_deg": {"cv": 0.125, "mean": 60.0}}
            (run / "analysis" / "summary.json").write_text(
                json.dumps({"groups": {g: stats for g in ("all", "few", "many")}}))
            members.append({"name": name, "config": config, "status": "done"})
    (sweep / "sweep.json").write_text(json.dumps({"members": members}))
    result = eqm("compare", sweep, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    table = lines[:[i for i, line in enumerate(lines) if line.startswith("A = ")][0]]
    rows = [line.split() for line in table if line.strip()[:2] in ("A ", "B ", "± ")]
    assert [row[:2] for row in rows[::2]] == [["A", "2"], ["B", "2"]]
    assert rows[0][2:] == ["91.00", "52.50", "52.50", "0.250", "0.125"], "means on one line"
    assert rows[1][:5] == ["±", "1.41", "±", "3.54", "±"], "their stds below them"
    assert f"{sweep}:name=eqm,scale=32" in "".join(lines), "a long path is folded, whole"
