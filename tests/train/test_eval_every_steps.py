"""`eval.every_steps`: verification every N optimizer steps (arcface_torch's `verbose`)."""

from __future__ import annotations

import json
import signal

import pytest

import eqmcli.train.trainer
from eqmcli.errors import UserError
from eqmcli.run.recipe import load_recipe
from eqmcli.train import train
from eqmcli.train.progress import eval_line

STEPS_ONLY = ["eval.every_epochs=0", "eval.every_steps=2", "optim.schedule=constant",
              "optim.warmup_epochs=0"]


def eval_records(run) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"]


def test_every_steps_verifies_at_those_steps_and_after_the_last(tiny_recipe_path, tmp_path):
    out = tmp_path / "run"
    summary = train(load_recipe(tiny_recipe_path, STEPS_ONLY), out, progress=False)
    per_epoch = summary.steps // 2
    evals = eval_records(out)
    expected = sorted({*range(2, summary.steps + 1, 2), summary.steps})
    assert [r["step"] for r in evals] == expected
    for record in evals:  # the epochs done, a fraction within an epoch
        assert record["epoch"] == pytest.approx(record["step"] / per_epoch, abs=1e-4)
        assert 0.0 <= record["accuracy"] <= 1.0
    assert isinstance(evals[-1]["epoch"], int), "the run's end is a whole epoch"
    assert (out / "checkpoints" / "best.pt").is_file()
    assert (out / "eval" / "synthetic.json").is_file(), "the last verification is the result"


def test_a_resumed_run_verifies_at_the_same_steps_with_the_same_results(
    tiny_recipe_path, tmp_path
):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(load_recipe(tiny_recipe_path, [*STEPS_ONLY, "train.epochs=2"]), straight,
          progress=False)
    train(load_recipe(tiny_recipe_path, [*STEPS_ONLY, "train.epochs=1"]), split, progress=False)
    train(load_recipe(tiny_recipe_path, [*STEPS_ONLY, "train.epochs=2"]), split, resume=True,
          progress=False)

    def outcome(run):
        return {r["step"]: r["accuracy"] for r in eval_records(run)}

    first_end = outcome(split).keys() - outcome(straight).keys()  # the 1-epoch run's last step
    assert len(first_end) == 1
    assert {k: v for k, v in outcome(split).items() if k not in first_end} == outcome(straight)
    assert any(k > max(first_end) and k % 2 == 0 for k in outcome(straight)), (
        "a verification within the resumed epoch is compared"
    )


def test_every_steps_without_sets_is_refused_naming_the_key(tiny_recipe_path):
    with pytest.raises(UserError, match=r"eval.every_steps needs at least one set"):
        load_recipe(tiny_recipe_path, ["eval.every_steps=5", "eval.sets=[]"])
    with pytest.raises(UserError, match=r"eval.every_steps"):
        load_recipe(tiny_recipe_path, ["eval.every_steps=-1"])


def test_a_verification_within_an_epoch_names_its_step_in_the_log_line():
    record = {"epoch": 1.5, "step": 9, "benchmark": "synthetic", "accuracy": 0.9,
              "accuracy_std": 0.01, "threshold": 0.5}
    assert eval_line(record).startswith("step 9 (epoch 1.5) verification on synthetic: 90.00%")
    assert eval_line({**record, "epoch": 2}).startswith("epoch 2 verification on synthetic")


def test_a_stop_at_an_epochs_last_step_keeps_its_verification_for_the_resume(
    tiny_recipe_path, tmp_path, monkeypatch
):
    """Ctrl-C during the last step of epoch 1: the run still writes epoch 1's record,
    verification and last.pt before it stops, so the resumed run's records are those of a
    run that never stopped (before, the resume started at epoch 2 and epoch 1's
    verification was never made)."""
    overrides = ["train.epochs=3", "optim.schedule=constant", "optim.warmup_epochs=0"]
    straight = tmp_path / "straight"
    full = train(load_recipe(tiny_recipe_path, overrides), straight, progress=False)
    per_epoch = full.steps // 3
    real_step = eqmcli.train.trainer.train_step

    def interrupted_step(parts, images, labels, flip, step, **kwargs):
        loss = real_step(parts, images, labels, flip, step, **kwargs)
        if step + 1 == per_epoch:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(eqmcli.train.trainer, "train_step", interrupted_step)
    split = tmp_path / "split"
    stopped = train(load_recipe(tiny_recipe_path, overrides), split, progress=False)
    assert stopped.interrupted and stopped.stop_signal == "SIGINT"
    assert stopped.steps == per_epoch
    assert [r["step"] for r in eval_records(split)] == [per_epoch]
    monkeypatch.setattr(eqmcli.train.trainer, "train_step", real_step)
    train(load_recipe(tiny_recipe_path, overrides), split, resume=True, progress=False)

    def outcome(run):
        return [(r["epoch"], r["step"], r["accuracy"]) for r in eval_records(run)]

    assert outcome(split) == outcome(straight)
    epochs = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1, 2, 3]
