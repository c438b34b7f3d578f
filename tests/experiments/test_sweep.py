"""`eqm sweep`: grid syntax, expansion, member states, skip/resume, Ctrl-C and restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eqmcli.errors import UserError
from eqmcli.experiments.grid import expand, parse_grid, short_keys, split_values
from eqmcli.experiments.sweep import (
    MemberOutcome,
    SweepOptions,
    member_commands,
    member_state,
    metric_stats,
    run_sweep,
)

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------- grid syntax
def test_values_are_typed_like_set_and_quotes_keep_commas_and_strings():
    axis = parse_grid("loss.t1=0.4, 5,1e-3,true,null,abc,'a,b',\"7\"")
    assert axis.key == "loss.t1"
    assert axis.values == (0.4, 5, 0.001, True, None, "abc", "a,b", "7")
    assert [type(v) for v in axis.values[:4]] == [float, int, float, bool]
    assert axis.texts[-2:] == ('"a,b"', '"7"'), "quoted values stay strings under --set"
    assert split_values(" x , 'y z' ") == [("x", False), ("y z", True)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("loss.t1", "is not of the form"),
        ("=1,2", "is not of the form"),
        ("loss.t1=", "is not of the form"),
        ("loss.t1=1,,2", "empty value"),
        ("loss.t1=1,'2", "unclosed"),
        ("loss.t1='2'x", "after a closing quote"),
        ("loss.t1=0.5,0.50", "repeats a value"),
        ("seed=1,2", "--seeds"),
    ],
)
def test_bad_grid_text_is_one_sentence(text, message):
    with pytest.raises(UserError, match=message):
        parse_grid(text)


def test_unknown_key_names_the_nearest_one(tiny_recipe_path):
    with pytest.raises(UserError, match="unknown key 'loss.tt1'; did you mean 't1'"):
        expand(tiny_recipe_path, [parse_grid("loss.tt1=0.4,0.5")], 1, [])
    with pytest.raises(UserError, match="given twice"):
        expand(tiny_recipe_path, [parse_grid("loss.t1=0.4")], 1, ["loss.t1=0.3"])


def test_cartesian_product_times_seeds_named_after_overrides(tiny_recipe_path):
    axes = [parse_grid("loss.t1=0.4,0.6"), parse_grid("loss.scale=16,32"),
            parse_grid("data.train.seed=0,1")]
    members = expand(tiny_recipe_path, axes, 2, ["train.epochs=1"])
    assert len(members) == 2 * 2 * 2 * 2
    first = members[0]
    assert first.name == "t1=0.4,scale=16,train.seed=0,seed=3", "seeds count from the recipe's 3"
    assert first.overrides == ("train.epochs=1", "loss.t1=0.4", "loss.scale=16",
                               "data.train.seed=0", "seed=3")
    assert first.recipe.loss.t1 == 0.4 and first.recipe.train.epochs == 1
    assert len({m.name for m in members}) == len(members)
    assert short_keys(["seed", "data.train.seed", "loss.t1"]) == {
        "seed": "seed", "data.train.seed": "train.seed", "loss.t1": "t1"}


def test_metric_stats_use_the_sample_std():
    stats = metric_stats([0.90, 0.92, 0.97])
    assert stats.mean == pytest.approx(0.93)
    assert stats.std == pytest.approx(((0.03**2 + 0.01**2 + 0.04**2) / 2) ** 0.5)
    assert metric_stats([0.5]).std is None


# ---------------------------------------------------------------- member state
def _fake_run(folder: Path, epoch: int | None) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "recipe.yaml").write_text("name: x\n")
    (folder / ".eqm-run").write_text("")
    if epoch is not None:
        torch.save({"epoch": epoch, "backbone": {}}, folder / "checkpoints" / "last.pt")


def test_member_state_decides_train_resume_restart_skip(tmp_path, tiny_recipe_path):
    assert member_state(tmp_path / "absent", 2) == "new"
    (tmp_path / "empty").mkdir()
    assert member_state(tmp_path / "empty", 2) == "new"
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "thesis.tex").write_text("precious")
    assert member_state(tmp_path / "user", 2) == "foreign"
    _fake_run(tmp_path / "nockpt", None)
    assert member_state(tmp_path / "nockpt", 2) == "restart"
    _fake_run(tmp_path / "half", 1)
    assert member_state(tmp_path / "half", 2) == "partial"
    _fake_run(tmp_path / "done", 2)
    assert member_state(tmp_path / "done", 2) == "done"

    member = expand(tiny_recipe_path, [], 1, [])[0]
    options = SweepOptions(recipe=tiny_recipe_path, out=tmp_path, axes=[])
    assert member_commands(options, member, "done") == []
    assert member_commands(options, member, "partial")[0][-1] == "--resume"
    assert member_commands(options, member, "restart")[0][-1] == "--force"
    assert "--resume" not in member_commands(options, member, "new")[0]


def test_a_foreign_folder_is_left_untouched(tmp_path, tiny_recipe_path):
    out = tmp_path / "sweep"
    (out / "seed=3").mkdir(parents=True)
    (out / "seed=3" / "notes.txt").write_text("mine")
    seen: list[MemberOutcome] = []
    result = run_sweep(SweepOptions(recipe=tiny_recipe_path, out=out, axes=[]), seen.append)
    assert [o.status for o in result.outcomes] == ["failed"]
    assert "not a run directory" in result.outcomes[0].message
    assert (out / "seed=3" / "notes.txt").read_text() == "mine"
    assert json.loads((out / "sweep.json").read_text())["members"][0]["status"] == "failed"


# --------------------------------------------------------------- real tiny runs
def _sweep_args(recipe: Path, out: Path, grid: str = "loss.t1=0.4,0.6") -> list[str]:
    return ["sweep", str(recipe), "--grid", grid, "--out", str(out),
            "--set", "train.epochs=1", "--set", "eval.every_epochs=1"]


@pytest.mark.slow
def test_sweep_runs_skips_finished_members_and_summarizes(tiny_recipe_path, tmp_path, eqm):

    out = tmp_path / "sweep"
    args = [*_sweep_args(tiny_recipe_path, out, "loss.t1=0.4"), "--seeds", "2", "--jobs", "2"]
    result = eqm(*args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "sweep.json").read_text())
    assert [m["status"] for m in summary["members"]] == ["done"] * 2
    config = summary["configs"][0]
    assert config["assignments"] == {"loss.t1": 0.4} and len(config["runs"]) == 2
    accuracy = config["metrics"]["accuracy"]
    assert accuracy["n"] == 2 and accuracy["std"] is not None
    assert (out / "logs" / "t1=0.4,seed=3.log").is_file()

    stamp = (out / "t1=0.4,seed=3" / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = eqm(*args)
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") == 2
    assert (out / "t1=0.4,seed=3" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_a_restart_finishes_without_redoing(tiny_recipe_path,
                                                                       tmp_path):
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "eqmcli", "sweep", str(tiny_recipe_path), "--grid",
            "train.epochs=1,6", "--set", "eval.every_epochs=100", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    second = out / "epochs=6,seed=3" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (second.is_file() and '"kind": "step"' in second.read_text()):
        assert sweep.poll() is None and time.monotonic() < deadline, "the second run never began"
        time.sleep(0.1)
    sweep.send_signal(signal.SIGINT)
    output, _ = sweep.communicate(timeout=240)
    assert sweep.returncode == 130, output
    assert "Interrupted (SIGINT)" in output and "run the same command again" in output
    first_ckpt = out / "epochs=1,seed=3" / "checkpoints" / "last.pt"
    stamp = first_ckpt.stat().st_mtime_ns
    state = json.loads((out / "sweep.json").read_text())
    assert [m["status"] for m in state["members"]] == ["done", "interrupted"]
    assert member_state(out / "epochs=6,seed=3", 6) == "partial", "it checkpointed mid-run"

    restart = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "skipped epochs=1,seed=3" in restart.stdout
    assert "epochs=6,seed=3 (resume" in restart.stdout
    assert first_ckpt.stat().st_mtime_ns == stamp, "the finished run was not trained again"
    final = json.loads((out / "sweep.json").read_text())
    assert [m["status"] for m in final["members"]] == ["skipped", "done"]
    assert member_state(out / "epochs=6,seed=3", 6) == "done"
