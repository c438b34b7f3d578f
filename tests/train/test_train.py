"""`eqm train`: run directory contract, exact resume, Ctrl-C, NaN stop, CLI errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import torch

from eqmcli.errors import TrainingStopped, UserError
from eqmcli.run.checkpoint import load_checkpoint
from eqmcli.run.recipe import load_recipe
from eqmcli.train import train


def weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one CPU thread inside, as in a process started with OMP_NUM_THREADS=1 (the
    floating-point summation order, hence the weights, depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_run_directory_holds_the_contract_files(tiny_recipe_path, tmp_path):
    out = tmp_path / "run"
    summary = train(load_recipe(tiny_recipe_path), out, progress=False)
    assert (out / "recipe.yaml").is_file()
    assert (out / "checkpoints" / "last.pt").is_file()
    assert (out / "checkpoints" / "best.pt").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"environment", "step", "epoch", "eval"}
    evals = [r for r in records if r["kind"] == "eval"]
    assert all({"benchmark", "accuracy", "accuracy_std"} <= r.keys() for r in evals)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in evals)
    assert summary.steps == load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    final = json.loads((out / "eval" / "synthetic.json").read_text())
    assert final["accuracy"] == evals[-1]["accuracy"] and final["roc"]["far"]
    assert not list((out / "checkpoints").glob("*.tmp")), "no temporary file is left behind"


def test_resume_continues_bitwise_exactly(tiny_recipe_path, tmp_path):
    overrides = ["optim.schedule=constant", "optim.warmup_epochs=0", "eval.every_epochs=0"]
    straight = tmp_path / "straight"
    train(load_recipe(tiny_recipe_path, [*overrides, "train.epochs=2"]), straight, progress=False)
    split = tmp_path / "split"
    train(load_recipe(tiny_recipe_path, [*overrides, "train.epochs=1"]), split, progress=False)
    summary = train(
        load_recipe(tiny_recipe_path, [*overrides, "train.epochs=2"]), split, resume=True,
        progress=False,
    )
    assert summary.resumed_from_step == summary.steps // 2
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(split / "checkpoints" / "last.pt")
    assert a["step"] == b["step"]
    assert weights_equal(a["backbone"], b["backbone"])
    assert weights_equal(a["head"], b["head"])


def test_non_empty_run_dir_is_refused_without_resume_or_force(tiny_recipe_path, tmp_path, eqm):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = eqm("train", str(tiny_recipe_path), "--out", str(out))
    assert result.exit_code == 2
    assert "not empty" in result.output and "--resume" in result.output
    assert (out / "notes.txt").read_text() == "mine", "nothing already written is lost"


def test_resume_refuses_a_changed_model(tiny_recipe_path, tiny_run_copy):
    out = tiny_run_copy
    with pytest.raises(UserError, match="model"):
        train(load_recipe(tiny_recipe_path, ["model.embedding_dim=8"]), out, resume=True,
              progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_recipe_path, tmp_path, monkeypatch):
    out = tmp_path / "run"
    recipe = load_recipe(tiny_recipe_path, ["train.epochs=3", "eval.every_epochs=0"])
    recipe_one = load_recipe(tiny_recipe_path, ["train.epochs=1", "eval.every_epochs=0"])
    train(recipe_one, out, progress=False)
    good = load_checkpoint(out / "checkpoints" / "last.pt")

    from eqmcli.losses import EqMHead

    healthy_forward = EqMHead.forward

    def diverging_forward(self, embeddings, labels):
        return healthy_forward(self, embeddings, labels) * float("nan")

    monkeypatch.setattr(EqMHead, "forward", diverging_forward)
    with pytest.raises(TrainingStopped, match="NaN"):
        train(recipe, out, resume=True, progress=False)
    after = load_checkpoint(out / "checkpoints" / "last.pt")
    assert after["step"] == good["step"]
    assert weights_equal(after["backbone"], good["backbone"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  epoch: 3\n", "did you mean 'epochs'"),
        ("train:\n  epochs: many\n", "train.epochs"),
        ("train: [\n", "YAML syntax error"),
    ],
)
def test_bad_recipe_exits_2_with_one_clear_message(tmp_path, text, expected, eqm):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = eqm("train", str(path), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_sigint_saves_and_resume_matches_an_uninterrupted_run(tiny_recipe_path, tmp_path, eqm):
    overrides = ["train.epochs=6", "eval.every_epochs=0"]
    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "eqmcli", "train", str(tiny_recipe_path), "--out", str(out),
               "--no-progress", *(f"--set={o}" for o in overrides)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()
    assert "--resume" in stderr.decode()
    stopped = load_checkpoint(out / "checkpoints" / "last.pt")
    assert 0 < stopped["step"] < 6 * 8, "stopped mid-way"

    straight = tmp_path / "straight"
    with one_thread():  # the resume and the uninterrupted run, in this process
        resumed = eqm(*command[3:], "--resume")
        train(load_recipe(tiny_recipe_path, overrides), straight, progress=False)
    assert resumed.exit_code == 0, resumed.output
    a = load_checkpoint(out / "checkpoints" / "last.pt")
    b = load_checkpoint(straight / "checkpoints" / "last.pt")
    assert a["step"] == b["step"]
    assert weights_equal(a["backbone"], b["backbone"])
    assert weights_equal(a["head"], b["head"])
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()
             if json.loads(x)["kind"] == "step"]
    assert steps == sorted(set(steps)), "metrics.jsonl has no duplicated or missing steps"


def test_dry_run_validates_without_training(tiny_recipe_path, tmp_path, eqm):
    result = eqm("train", str(tiny_recipe_path), "--dry-run",
                 "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output
    assert not (tmp_path / "run").exists()
