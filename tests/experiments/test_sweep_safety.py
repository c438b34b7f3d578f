"""`eqm sweep` under hostile or faulty input (issue 20): nothing recorded that did not run,
nothing of the user's overwritten, no orphans, one sentence and exit 2 for a mistake."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml

from eqmcli.errors import UserError
from eqmcli.experiments import sweep as sweep_module
from eqmcli.experiments.grid import MAX_MEMBERS, expand, parse_grid
from eqmcli.experiments.sweep import SweepOptions, lock_sweep_folder, run_is_locked, run_sweep
from eqmcli.run.rundir import LOCK
from eqmcli.train.run_state import RunLock, with_absolute_paths

ROOT = Path(__file__).resolve().parents[2]


def _finished_member(out: Path, recipe_path: Path, sets: list[str]) -> Path:
    """A run folder that looks finished, trained with `recipe_path` + `sets` (no training)."""
    member = expand(recipe_path, [], 1, sets)[0]
    run_dir = out / member.name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(with_absolute_paths(member.recipe).to_yaml())
    (run_dir / ".eqm-run").write_text("")
    torch.save({"epoch": member.recipe.train.epochs}, run_dir / "checkpoints" / "last.pt")
    return run_dir


# ----------------------------------------------------------- broken 1: changed recipe
def test_a_rerun_with_another_set_or_an_edited_recipe_is_refused_naming_the_keys(
    tiny_recipe_path, tmp_path, eqm
):

    out = tmp_path / "sweep"
    _finished_member(out, tiny_recipe_path, [])
    first = run_sweep(SweepOptions(recipe=tiny_recipe_path, out=out, axes=[]))
    assert [o.status for o in first.outcomes] == ["skipped"], "the same settings: skipped"
    recorded = (out / "sweep.json").read_text()

    result = eqm("sweep", str(tiny_recipe_path), "--out", str(out),
                 "--set", "loss.scale=32")
    assert result.exit_code == 2, result.output
    assert "loss.scale 16.0 -> 32" in result.output and "Traceback" not in result.output
    assert (out / "sweep.json").read_text() == recorded, "nothing recorded that did not run"

    edited = yaml.safe_load(tiny_recipe_path.read_text())
    edited["optim"]["lr"] = 0.2
    tiny_recipe_path.write_text(yaml.safe_dump(edited))
    with pytest.raises(UserError, match=r"other settings than this sweep.*optim\.lr 0\.05 -> 0\.2"):
        run_sweep(SweepOptions(recipe=tiny_recipe_path, out=out, axes=[]))
    assert (out / "sweep.json").read_text() == recorded


# ------------------------------------------------------------ broken 6: huge grids
def test_a_billion_member_grid_is_refused_before_the_product_is_built(tiny_recipe_path):
    axes = [parse_grid(f"optim.lr={','.join(str(v) for v in range(1, 11))}")] + [
        parse_grid(f"loss.{key}={','.join(str(v / 10) for v in range(1, 11))}")
        for key in ("t1", "t2", "scale")
    ] + [parse_grid(f"train.{key}={','.join(str(v) for v in range(1, 11))}")
         for key in ("epochs", "batch_size", "log_every", "seed")] + [
        parse_grid(f"data.num_workers={','.join(str(v) for v in range(10))}")]
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=f"has 1000000000 runs; at most {MAX_MEMBERS}"):
            expand(tiny_recipe_path, axes, 1, [])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"{peak} bytes: the product was built before the count"


def test_a_300_character_grid_value_is_one_sentence(tiny_recipe_path, tmp_path, eqm):

    out = tmp_path / "sweep"
    result = eqm("sweep", str(tiny_recipe_path), "--out", str(out),
                 "--grid", "name=" + "x" * 300)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "longer than the file system allows" in result.output
    assert not out.exists()


# --------------------------------------------------------------------- the options
def test_jobs_zero_is_refused_before_anything_is_created(tiny_recipe_path, tmp_path, eqm):

    out = tmp_path / "sweep"
    result = eqm("sweep", str(tiny_recipe_path), "--out", str(out),
                 "--jobs", "0")
    assert result.exit_code == 2 and "--jobs must be at least 1, got 0" in result.output
    assert not out.exists()


def test_an_out_that_is_a_file_a_data_folder_or_a_run_is_refused_untouched(
    tiny_recipe_path, tmp_path, eqm
):

    file = tmp_path / "notes.txt"
    file.write_text("mine")
    data = tmp_path / "faces"
    (data / "alice").mkdir(parents=True)
    (data / "alice" / "0.jpg").write_bytes(b"jpeg")
    run = _finished_member(tmp_path / "runs", tiny_recipe_path, []).parent / "seed=3"
    cases = {file: "is a file", data: "holds files that no eqm sweep wrote",
             run: "is a run directory"}
    for out, message in cases.items():
        before = sorted(p.relative_to(tmp_path) for p in out.parent.rglob("*"))
        result = eqm("sweep", str(tiny_recipe_path), "--out", str(out))
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert sorted(p.relative_to(tmp_path) for p in out.parent.rglob("*")) == before
    assert file.read_text() == "mine"


def test_an_out_that_holds_a_sweep_of_other_keys_is_refused(tiny_recipe_path, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"grid": {"loss.t1": [0.4]}}))
    with pytest.raises(UserError, match="holds another sweep"):
        run_sweep(SweepOptions(recipe=tiny_recipe_path, out=out, axes=[]))


# ------------------------------------------------------------ concurrency, orphans
def test_a_second_sweep_on_the_same_out_is_refused_and_marks_nothing_failed(
    tiny_recipe_path, tmp_path
):
    out = tmp_path / "sweep"
    _finished_member(out, tiny_recipe_path, [])
    run_sweep(SweepOptions(recipe=tiny_recipe_path, out=out, axes=[]))
    recorded = (out / "sweep.json").read_text()
    first = lock_sweep_folder(out)  # the first sweep, still running
    try:
        with pytest.raises(UserError, match=f"sweep folder {out} is in use by another eqm"):
            run_sweep(SweepOptions(recipe=tiny_recipe_path, out=out, axes=[]))
    finally:
        first.release()
    assert (out / "sweep.json").read_text() == recorded


def test_a_member_still_locked_by_an_earlier_sweep_is_waited_for(
    tiny_recipe_path, tmp_path, monkeypatch
):
    out = tmp_path / "sweep"
    run_dir = _finished_member(out, tiny_recipe_path, [])
    holder = RunLock(run_dir / LOCK)  # the earlier sweep's training, checkpointing
    holder.acquire()
    assert run_is_locked(run_dir)
    monkeypatch.setattr(sweep_module, "ADOPT_SECONDS", 0.3)
    try:
        busy = run_sweep(SweepOptions(recipe=tiny_recipe_path, out=out, axes=[]))
    finally:
        holder.release()
    assert busy.outcomes[0].status == "failed" and "in use" in busy.outcomes[0].message
    assert not run_is_locked(run_dir)
    again = run_sweep(SweepOptions(recipe=tiny_recipe_path, out=out, axes=[]))
    assert again.outcomes[0].status == "skipped"


PARENT = """
import sys, time
from pathlib import Path
from eqmcli.experiments.process_pool import Task, run_tasks
child = [sys.executable, "-c", "import time, os; print(os.getpid(), flush=True); time.sleep(60)"]
run_tasks([Task("t", [child], Path(sys.argv[1]))], 1, lambda slot: dict(__import__("os").environ))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_member_dies_with_its_sweep_on_kill_9(tmp_path):
    log = tmp_path / "member.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(log)], env=env)
    deadline = time.monotonic() + 30
    while not (log.is_file() and log.read_text().strip().splitlines()[1:]):
        assert time.monotonic() < deadline, "the member never started"
        time.sleep(0.05)
    child = int(log.read_text().strip().splitlines()[-1])
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
        assert time.monotonic() < deadline, "the member outlived its sweep"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return "Z"
