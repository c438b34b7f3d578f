"""TensorBoard scalars (`train.tensorboard` / `eqm train --tensorboard`): the same values as
metrics.jsonl, read back with TensorBoard's own reader; resume without duplicates; a clear
refusal when the optional extra is missing."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from eqmcli.run.recipe import load_recipe
from eqmcli.train import train
from eqmcli.train.run_state import resume_changes
from eqmcli.train.tensorboard import record_scalars

FLOAT32 = 1e-6  # TensorBoard stores scalars as float32


def read_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in `tb_dir` as (step, value) pairs, read by TensorBoard's reader."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def read_records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def assert_same(scalars: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [step for step, _ in scalars] == [step for step, _ in expected]
    for (_, value), (_, wanted) in zip(scalars, expected, strict=True):
        assert value == pytest.approx(wanted, rel=FLOAT32, abs=1e-7)


def test_tensorboard_scalars_equal_metrics_jsonl(tiny_recipe_path, tmp_path, eqm):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    result = eqm("train", str(tiny_recipe_path), "--out", str(out),
                 "--set", "train.epochs=1", "--tensorboard", "--no-progress")
    assert result.exit_code == 0, result.output
    assert list((out / "tb").glob("events.out.tfevents.*")), "event files in RUN/tb/"
    scalars = read_scalars(out / "tb")
    steps, evals = read_records(out, "step"), read_records(out, "eval")
    assert {"train/loss", "train/lr", "train/img_per_s", "head/hard_fraction",
            "head/inter_violation_fraction", "head/case_ideal", "head/loss_above_floor",
            "epoch/loss", "eval/synthetic/accuracy", "eval/synthetic/threshold",
            "eval/synthetic/auc", "eval/synthetic/eer"} <= scalars.keys()
    for key in ("loss", "lr", "img_per_s"):
        assert_same(scalars[f"train/{key}"], [(r["step"], r[key]) for r in steps])
    assert_same(scalars["head/hard_fraction"], [(r["step"], r["hard_fraction"]) for r in steps])
    assert_same(scalars["eval/synthetic/accuracy"], [(r["step"], r["accuracy"]) for r in evals])
    assert_same(scalars["eval/synthetic/threshold"],
                [(r["step"], r["threshold"]) for r in evals])


def test_resume_continues_tensorboard_without_duplicate_steps(tiny_recipe_path, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    overrides = ["train.tensorboard=true", "eval.every_epochs=0"]
    train(load_recipe(tiny_recipe_path, [*overrides, "train.epochs=1"]), out, progress=False)
    epoch_one = tmp_path / "epoch1.pt"
    shutil.copy(out / "checkpoints" / "last.pt", epoch_one)
    two_epochs = load_recipe(tiny_recipe_path, [*overrides, "train.epochs=2"])
    train(two_epochs, out, resume=True, progress=False)
    # a crash after epoch 2's events but before its checkpoint: epoch 2 is replayed
    shutil.copy(epoch_one, out / "checkpoints" / "last.pt")
    summary = train(two_epochs, out, resume=True, progress=False)
    steps = read_records(out, "step")
    assert summary.resumed_from_step == steps[-1]["step"] // 2
    losses = read_scalars(out / "tb")["train/loss"]
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 3
    assert [step for step, _ in losses] == list(range(1, summary.steps + 1)), "each step once"
    assert_same(losses, [(r["step"], r["loss"]) for r in steps])


def test_missing_tensorboard_extra_exits_2_before_anything_is_created(
    tiny_recipe_path, tmp_path, monkeypatch, eqm
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    out = tmp_path / "run"
    result = eqm("train", str(tiny_recipe_path), "--out", str(out),
                 "--tensorboard", "--no-progress")
    assert result.exit_code == 2
    assert 'pip install -e ".[tensorboard]"' in result.output
    assert "Traceback" not in result.output
    assert not out.exists(), "nothing is created"


def test_tensorboard_is_not_frozen_on_resume(tiny_recipe_path):
    stored = load_recipe(tiny_recipe_path)
    changes = resume_changes(stored, load_recipe(tiny_recipe_path, ["train.tensorboard=true"]),
                             "run")
    assert [(c.key, c.before, c.after) for c in changes] == [("train.tensorboard", False, True)]


def test_record_scalars_keep_known_numbers_only():
    record = {"kind": "eval", "epoch": 1, "step": 7, "benchmark": "lfw", "accuracy": 0.9,
              "threshold": 0.3, "auc": None, "fold_accuracies": [0.9], "flip": True,
              "tar_at_far": {"1e-03": 0.5, "1e-04": None}}
    assert record_scalars(record) == {"eval/lfw/accuracy": 0.9, "eval/lfw/threshold": 0.3,
                                      "eval/lfw/tar_at_far_1e-03": 0.5}
    assert record_scalars({"kind": "resume", "step": 3, "changed": []}) == {}
    assert record_scalars({"kind": "step", "epoch": 1, "step": 2, "loss": float("nan"),
                           "lr": 0.1}) == {"train/lr": 0.1}


def test_a_tensorboard_folder_that_is_a_file_or_read_only_is_one_sentence(
    tiny_recipe_path, tmp_path, monkeypatch, eqm
):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    quick = ["--set", "eval.every_epochs=0", "--no-progress"]
    first = eqm("train", str(tiny_recipe_path), "--out", str(out),
                "--set", "train.epochs=1", *quick)
    assert first.exit_code == 0, first.output
    (out / "tb").write_text("my notes")
    resume = ["train", str(tiny_recipe_path), "--out", str(out), "--resume",
              "--set", "train.epochs=2", "--tensorboard", *quick]
    result = eqm(*resume)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "tb is a file, not a folder" in said, said
    assert "Traceback" not in result.output and (out / "tb").read_text() == "my notes"
    (out / "tb").unlink()
    (out / "tb").mkdir()
    real_open = os.open

    def read_only(path, *args, **kwargs):  # what a read-only RUN/tb does to a new file
        if Path(os.fsdecode(path)).parent == out / "tb":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    result = eqm(*resume)
    said = " ".join(result.output.split())
    assert result.exit_code == 2, said
    assert "the TensorBoard folder" in said and "cannot be written: Read-only file system" in said
    assert "Traceback" not in result.output and not list((out / "tb").iterdir())
