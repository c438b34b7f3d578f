"""Nothing lost, ever (issue 10): run names, --force, the run lock, resume integrity."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from eqmcli.errors import UserError
from eqmcli.run.checkpoint import load_checkpoint
from eqmcli.run.recipe import load_recipe
from eqmcli.train import train
from eqmcli.train.run_state import resume_command

QUICK = ["--set", "train.epochs=1", "--set", "eval.every_epochs=0", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def eqm_process(*args: str) -> list[str]:
    """The command line of `eqm ARGS...` in a new Python process."""
    return [sys.executable, "-m", "eqmcli", *args]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ names and --force
@pytest.mark.parametrize("name", ["..", ".", "ABSOLUTE", "a/b", "..\\x"])
def test_recipe_name_that_is_not_a_plain_name_is_refused(tiny_recipe_path, tmp_path, monkeypatch,
                                                         name, eqm):
    work = tmp_path / "work"
    work.mkdir()
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    for _ in range(2):  # `name: ..` run twice used to delete the working directory
        result = eqm("train", str(tiny_recipe_path), "--set", f"name={name}",
                     "--force", *QUICK)
        assert result.exit_code == 2, result.output
        assert "not a plain folder name" in result.output
    assert (work / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt"], "nothing was created"
    assert not (tmp_path / "elsewhere").exists()


def test_a_300_character_recipe_name_is_refused_by_dry_run_for_its_length(
    tiny_recipe_path, tmp_path, monkeypatch, eqm
):
    monkeypatch.chdir(tmp_path)
    name = "n" * 300
    for flags in (["--dry-run"], QUICK):
        result = eqm("train", str(tiny_recipe_path), "--set", f"name={name}",
                     *flags)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and "is 300 bytes long, too long for a folder name" in said
        assert "not a plain folder name" not in said
    assert not (tmp_path / "runs").exists()
    result = eqm("train", str(tiny_recipe_path), "--set", f"name={name}",
                 "--out", str(tmp_path / "run"), "--dry-run")
    assert result.exit_code == 0, result.output


def test_force_refuses_a_folder_that_is_not_a_run_directory(tiny_recipe_path, tmp_path, eqm):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    (out / "recipe.yaml").write_text("not ours\n")  # a recipe alone does not make a run dir
    result = eqm("train", str(tiny_recipe_path), "--out", str(out), "--force",
                 *QUICK)
    assert result.exit_code == 2, result.output
    assert "does not look like an eqm run directory" in result.output
    assert (out / "holiday.jpg").read_bytes() == b"precious"


def test_force_removes_a_run_directory_and_says_what_it_removed(tiny_recipe_path, tmp_path, eqm):
    out = tmp_path / "run"
    first = eqm("train", str(tiny_recipe_path), "--out", str(out), *QUICK)
    assert first.exit_code == 0, first.output
    assert (out / ".eqm-run").is_file(), "a run directory carries our marker"
    (out / "notes.txt").write_text("old")
    again = eqm("train", str(tiny_recipe_path), "--out", str(out), "--force",
                *QUICK)
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())
    assert "--force: removed" in said and "checkpoints/" in said and "notes.txt" in said
    assert not (out / "notes.txt").exists()
    assert [r["kind"] for r in records(out)].count("epoch") == 1, "a fresh run, not appended"


def test_force_accepts_a_run_made_before_the_marker_existed(tiny_recipe_path, tiny_run_copy, eqm):
    out = tiny_run_copy
    (out / ".eqm-run").unlink()  # an older run: recipe.yaml + checkpoints/ only
    result = eqm("train", str(tiny_recipe_path), "--out", str(out), "--force",
                 *QUICK)
    assert result.exit_code == 0, result.output
    assert (out / ".eqm-run").is_file()


@pytest.mark.parametrize("source", ["run", "checkpoint", "pairs"])
def test_force_refuses_a_run_the_recipe_reads(tiny_recipe_path, tiny_run_copy, source, eqm):
    out = tiny_run_copy
    last = out / "checkpoints" / "last.pt"
    before = last.read_bytes()
    setting = {
        "run": f"model.init_from={out}",
        "checkpoint": f"model.init_from={last}",
        "pairs": f"eval.sets=[synthetic, {out / 'my_pairs.txt'}]",
    }[source]
    (out / "my_pairs.txt").write_text("a.png b.png 1\n")
    result = eqm("train", str(tiny_recipe_path), "--out", str(out), "--force",
                 "--set", setting, *QUICK)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    key = "eval.sets" if source == "pairs" else "model.init_from"
    assert "--force refused" in said and f"({key}), which this run reads" in said
    assert last.read_bytes() == before, "nothing was deleted"
    assert (out / "my_pairs.txt").is_file()


# ---------------------------------------------------------------------------- lock
def test_a_running_run_is_locked_against_train_resume_and_force(tiny_recipe_path, tmp_path, eqm):
    out = tmp_path / "run"
    command = eqm_process("train", str(tiny_recipe_path), "--out", str(out), "--no-progress",
                          "--set", "train.epochs=200", "--set", "eval.every_epochs=0")
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=ENV)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "metrics.jsonl").is_file():
            time.sleep(0.05)
        assert first.poll() is None, "the first run is still training"
        for extra in ([], ["--resume"], ["--force"]):
            second = eqm("train", str(tiny_recipe_path), "--out", str(out),
                         *extra, *QUICK)
            assert second.exit_code == 2, (extra, second.output)
            text = " ".join(second.output.split())
            assert "in use by another eqm process" in text, text
            assert f"PID {first.pid}" in text, text
        assert (out / "metrics.jsonl").is_file(), "the live run was not deleted"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # kill -9 leaves no stale lock: the next run may take the directory over
    after = eqm("train", str(tiny_recipe_path), "--out", str(out), "--force",
                *QUICK)
    assert after.exit_code == 0, after.output


# -------------------------------------------------------------------------- resume
def test_resume_applies_and_records_changed_optimizer_settings(tiny_recipe_path, tmp_path):
    out = tmp_path / "run"
    base = ["eval.every_epochs=0", "optim.lr=0.05", "optim.schedule=cosine"]
    train(load_recipe(tiny_recipe_path, [*base, "train.epochs=1"]), out, progress=False)
    first_step = load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    changed = ["eval.every_epochs=0", "optim.lr=0.001", "optim.schedule=constant",
               "optim.momentum=0.5", "train.epochs=2"]
    train(load_recipe(tiny_recipe_path, changed), out, resume=True, progress=False)

    state = load_checkpoint(out / "checkpoints" / "last.pt")
    group = state["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(0.001) and group["momentum"] == 0.5, "what ran"
    stored = yaml.safe_load(state["recipe"])["optim"]
    assert stored["lr"] == 0.001 and stored["schedule"] == "constant"
    assert yaml.safe_load((out / "recipe.yaml").read_text())["optim"]["lr"] == 0.001
    steps = [r for r in records(out) if r["kind"] == "step" and r["step"] > first_step]
    assert steps and all(r["lr"] == pytest.approx(0.001) for r in steps)
    (resume,) = [r for r in records(out) if r["kind"] == "resume"]
    keys = {c["key"]: (c["before"], c["after"]) for c in resume["changed"]}
    assert keys["optim.lr"] == (0.05, 0.001) and keys["optim.momentum"] == (0.9, 0.5)
    assert resume["step"] == first_step and state["resumes"][-1]["step"] == first_step


def test_resume_with_another_optimizer_type_is_one_sentence(tiny_recipe_path, tiny_run_copy, eqm):
    out = tiny_run_copy
    result = eqm("train", str(tiny_recipe_path), "--out", str(out), "--resume",
                 "--set", "optim.name=adamw", *QUICK)
    assert result.exit_code == 2, result.output
    assert "optim.name" in result.output and "Traceback" not in result.output


def test_performance_settings_do_not_block_resume(tiny_recipe_path, tiny_run_copy):
    out = tiny_run_copy
    summary = train(
        load_recipe(tiny_recipe_path, ["train.epochs=2", "eval.every_epochs=0",
                                       "data.num_workers=1", "train.log_every=3",
                                       "train.device=auto"]),
        out, resume=True, progress=False,
    )
    assert summary.resumed_from_step == summary.steps // 2


def test_resume_still_refuses_a_changed_data_source(tiny_recipe_path, tiny_run_copy):
    out = tiny_run_copy
    with pytest.raises(UserError, match="data.train.num_classes"):
        train(load_recipe(tiny_recipe_path, ["data.train.num_classes=9"]), out, resume=True,
              progress=False)


def test_resume_command_quotes_paths_and_carries_every_override():
    line = resume_command(Path("my recipes/tiny.yaml"), Path("runs/a b"),
                          ["optim.lr=0.01", "name=it's"])
    assert shlex.split(line) == ["eqm", "train", "my recipes/tiny.yaml", "--out", "runs/a b",
                                 "--resume", "--set", "optim.lr=0.01", "--set", "name=it's"]


def interrupt_and_resume_as_printed(recipe: Path, out: Path, sig: int) -> subprocess.Popen:
    """Start a run, send `sig` once it trains, then run the printed resume command."""
    overrides = ["--set", "train.epochs=4", "--set", "eval.every_epochs=0"]
    process = subprocess.Popen(eqm_process("train", str(recipe), "--out", str(out),
                                           "--no-progress", *overrides),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    return process, stderr.decode()


def test_printed_resume_command_works_as_printed(tmp_path, tiny_recipe, eqm):
    recipe = tmp_path / "my recipes" / "tiny.yaml"
    recipe.parent.mkdir()
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    out = tmp_path / "the run"
    process, stderr = interrupt_and_resume_as_printed(recipe, out, signal.SIGINT)
    assert process.returncode == 130, stderr
    printed = stderr.split("Resume with:", 1)[1].strip().splitlines()[0]
    words = shlex.split(printed)
    assert words[:2] == ["eqm", "train"]
    resumed = eqm(*words[1:])  # the CLI in this process: no second torch start
    assert resumed.exit_code == 0, resumed.output
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 4, "the resumed run kept the --set overrides (train.epochs=4)"
    assert torch.isfinite(state["head"]["weight"]).all()
