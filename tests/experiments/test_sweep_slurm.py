"""`eqm sweep --launcher slurm` through submitit, against stand-in Slurm commands
(`tests/fake_slurm.py`: `sbatch` records the script and runs the array here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fake_slurm
import pytest
import torch

from eqmcli.errors import UserError
from eqmcli.experiments.grid import expand
from eqmcli.experiments.launchers import (
    MemberJob,
    SlurmSettings,
    child_setup,
    distributed_prefix,
    duration_minutes,
    memory_gb,
    read_launcher_config,
)
from eqmcli.experiments.status import sweep_status
from eqmcli.experiments.sweep import SweepOptions, member_commands, run_sweep
from eqmcli.run.recipe import load_recipe
from eqmcli.train import train

pytest.importorskip("submitit", reason="needs submitit: pip install 'eqmcli[cluster]'")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def slurm(tmp_path, monkeypatch) -> Path:
    """Stand-in Slurm commands first on PATH; returns their state folder."""
    bin_dir = fake_slurm.install(tmp_path / "fake-slurm")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "fake-slurm" / "state"


def _grid_args(recipe: Path, out: Path) -> list[str]:
    """A 2 x 3 grid x 2 seeds, asking for 4 GPUs per member."""
    return ["sweep", str(recipe), "--grid", "loss.t1=0.4,0.6", "--grid",
            "loss.scale=16,32,64", "--seeds", "2", "--set", "train.device=auto",
            "--out", str(out), "--launcher", "slurm", "--partition", "gpu",
            "--gpus-per-job", "4", "--cpus-per-job", "10", "--mem", "64G", "--time",
            "04:00:00", "--array-parallelism", "5", "--slurm-option", "account=lab"]


def test_the_array_script_carries_the_resources_and_a_rerun_submits_only_failed_members(
    tiny_recipe_path, tmp_path, slurm, eqm
):
    (slurm / "hold").write_text("")  # record, do not run
    out = tmp_path / "sweep"
    result = eqm(*_grid_args(tiny_recipe_path, out))
    assert result.exit_code == 0, result.output
    script = (slurm / "scripts" / "1000.sh").read_text()
    for line in ("--array=0-11%5", "--partition=gpu", "--gpus-per-node=4",
                 "--cpus-per-task=10", "--mem=64G", "--time=240", "--account=lab",
                 "--nodes=1", "--ntasks-per-node=1", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in script, line
    assert "submitit.core._submit" in script
    members = json.loads((out / "sweep.json").read_text())["members"]
    assert [m["job_id"] for m in members] == [f"1000_{i}" for i in range(12)]
    assert {m["status"] for m in members} == {"submitted"}
    assert {row.state for row in sweep_status(out)} == {"pending"}

    (slurm / "jobs" / "1000_3.state").write_text("FAILED")
    again = eqm(*_grid_args(tiny_recipe_path, out))
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (slurm / "scripts").iterdir()) == ["1000.sh", "1001.sh"]
    assert "--array" not in (slurm / "scripts" / "1001.sh").read_text(), "one job, not 12"
    members = json.loads((out / "sweep.json").read_text())["members"]
    assert members[3]["job_id"] == "1001" and members[3]["status"] == "submitted"
    assert [m["status"] for m in members].count("pending") == 11


def test_a_member_with_g_gpus_trains_under_torchrun(tiny_recipe_path, tmp_path, monkeypatch):
    member = expand(tiny_recipe_path, [], 1, [])[0]
    options = SweepOptions(recipe=tiny_recipe_path, out=tmp_path, axes=[])
    train = member_commands(options, member, "new", distributed_prefix(4, 1))[0]
    assert train[1:6] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone",
                          "-m"]
    assert train[6:8] == ["eqmcli", "train"]
    assert member_commands(options, member, "new", distributed_prefix(1, 1))[0][1:4] == [
        "-m", "eqmcli", "train"]
    for name, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NODEID": "1",
                        "SLURM_JOB_NODELIST": "gpu[3-4]"}.items():
        monkeypatch.setenv(name, value)  # the second node of a 2-node member's job
    assert distributed_prefix(8, 2)[2:] == [
        "--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu3:29400", "--rdzv-id=77"]


def test_launcher_settings_from_a_file_and_bad_ones_in_one_sentence(
    tiny_recipe_path, tmp_path, slurm, monkeypatch, eqm
):
    config = tmp_path / "cluster.yaml"
    config.write_text("launcher: slurm\npartition: long\ntime: 2-00:00:00\n"
                      "slurm_options: {qos: high}\n")
    assert read_launcher_config(config).partition == "long"
    (slurm / "hold").write_text("")
    out = tmp_path / "sweep"
    result = eqm("sweep", str(tiny_recipe_path), "--out", str(out), "--launcher-config",
                 str(config), "--time", "01:30:00")
    assert result.exit_code == 0, result.output
    script = (slurm / "scripts" / "1000.sh").read_text()
    assert "--partition=long\n" in script and "--qos=high\n" in script
    assert "--time=90\n" in script, "the command line overrides the file"
    assert duration_minutes("2-00:00:00") == 2880 and memory_gb("500M") == 500 / 1024

    cases = [
        (["--slurm-option", "acount=lab"], "unknown --slurm-option key 'acount'"),
        (["--slurm-option", "partition=x"], "--slurm-option partition is set by --partition"),
        (["--gpus-per-job", "2"], "the members run on the CPU (train.device: cpu)"),
        (["--time", "soon"], "is not a duration"),
    ]
    for extra, message in cases:
        bad = eqm("sweep", str(tiny_recipe_path), "--out", str(tmp_path / "other"),
                  "--launcher", "slurm", *extra)
        assert bad.exit_code == 2 and message in bad.output, (extra, bad.output)
        assert "Traceback" not in bad.output and not (tmp_path / "other").exists()
    (slurm / "refuse").write_text("Invalid partition name specified")
    refused = eqm("sweep", str(tiny_recipe_path), "--out", str(tmp_path / "other"),
                  "--launcher", "slurm")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "sbatch refused the job array: sbatch: error: Invalid partition" in refused.output
    assert not (tmp_path / "other" / "sweep.json").exists()
    config.write_text("launcher: slurm\npartitoin: long\n")
    bad = eqm("sweep", str(tiny_recipe_path), "--out", str(out), "--launcher-config",
              str(config))
    assert bad.exit_code == 2 and "'partitoin' is not a known setting" in bad.output

    (tmp_path / "no-slurm").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))  # a machine without srun
    with pytest.raises(UserError, match="found no 'srun' on PATH"):
        run_sweep(SweepOptions(recipe=tiny_recipe_path, out=tmp_path / "x", axes=[],
                               launcher="slurm", slurm=SlurmSettings()))
    assert not (tmp_path / "x").exists()
    monkeypatch.setitem(sys.modules, "submitit", None)  # the [cluster] extra not installed
    with pytest.raises(UserError, match=r"needs submitit: pip install 'eqmcli\[cluster\]'"):
        run_sweep(SweepOptions(recipe=tiny_recipe_path, out=tmp_path / "x", axes=[],
                               launcher="slurm", slurm=SlurmSettings()))


CHILD = """
import signal, sys, time
from pathlib import Path
seen = []
signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
Path(sys.argv[1]).write_text("ready")
while not seen:
    time.sleep(0.01)
time.sleep(0.3)  # the trainer's next step boundary and checkpoint
Path(sys.argv[1]).write_text(f"{len(seen)} SIGTERM")
sys.exit(143)
"""


@pytest.mark.parametrize("preempted", [False, True], ids=["time-limit", "preemption"])
def test_checkpoint_stops_the_training_with_exactly_one_sigterm(tiny_recipe_path, tmp_path,
                                                                preempted):
    """submitit's hook: USR2 alone (a time limit) makes it send the one SIGTERM; after a
    preemption's SIGTERM (which Slurm gave every process of the task) it sends none."""
    member = expand(tiny_recipe_path, [], 1, [])[0]
    job = MemberJob(SweepOptions(recipe=tiny_recipe_path, out=tmp_path, axes=[]), member)
    note = tmp_path / "child.txt"
    job._process = subprocess.Popen([sys.executable, "-c", CHILD, str(note)],
                                    preexec_fn=child_setup(None))
    _wait(lambda: note.is_file(), 30, "the child")
    job._process.send_signal(signal.SIGUSR2)  # Slurm's USR2 reaches the training too
    if preempted:
        job._process.send_signal(signal.SIGTERM)
        job._signalled = True  # what the job side's SIGTERM handler notes
    again = job.checkpoint()
    assert job._process.poll() == 143 and note.read_text() == "1 SIGTERM"
    assert isinstance(again.function, MemberJob) and again.function.member == member


def _run_folder(run_dir: Path, epoch: int, epochs: int = 2) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text("name: x\n")
    (run_dir / ".eqm-run").write_text("")
    torch.save({"epoch": epoch}, run_dir / "checkpoints" / "last.pt")
    records = [{"kind": "step", "epoch": epoch, "step": 5 * epoch + 3, "loss": 1.0},
               {"kind": "eval", "epoch": epoch, "step": 5 * epoch + 3, "accuracy": 0.75}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_status_reports_each_state_with_job_progress_and_log(tmp_path, slurm, eqm):
    out = tmp_path / "sweep"
    names = ["pending", "running", "requeued", "preempted", "done", "failed", "timeout"]
    states = ["PENDING", "RUNNING", "PENDING", "REQUEUED", "COMPLETED", "FAILED", "TIMEOUT"]
    members = []
    for i, (name, state) in enumerate(zip(names, states, strict=True)):
        (slurm / "jobs" / f"1000_{i}.state").write_text(state)
        log = out / "logs" / f"{name}.log"
        members.append({"name": name, "dir": str(out / name), "epochs": 2,
                        "job_id": f"1000_{i}", "log": str(log), "status": "submitted"})
    for name, epoch in (("requeued", 1), ("preempted", 1), ("done", 2), ("failed", 1)):
        _run_folder(out / name, epoch)
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "failed.log").write_text("step 3\nError: CUDA out of memory\n")
    (out / "sweep.json").write_text(json.dumps({"grid": {}, "members": members}))

    rows = {row.name: row for row in sweep_status(out)}
    assert {name: rows[name].state for name in names} == {
        "pending": "pending", "running": "running", "requeued": "requeued",
        "preempted": "requeued", "done": "done", "failed": "failed", "timeout": "failed"}
    assert rows["failed"].message.startswith("Error: CUDA out of memory (log: ")
    assert rows["timeout"].message.startswith("Slurm says TIMEOUT (log: ")
    assert (rows["done"].epoch, rows["done"].step, rows["done"].verification) == (2, 13, 0.75)
    assert rows["running"].job_id == "1000_1" and rows["pending"].step is None
    stored = {m["name"]: m for m in json.loads((out / "sweep.json").read_text())["members"]}
    assert stored["failed"]["state"] == "failed" and stored["done"]["step"] == 13

    shown = eqm("sweep", "status", str(out))
    assert shown.exit_code == 0, shown.output
    assert "requeued" in shown.output and "1000_5" in shown.output
    assert "CUDA out of memory" in shown.output


# ------------------------------------------------------------- running for real
PREEMPT = ["--set", "train.epochs=2", "--set", "data.train.min_images=60", "--set",
           "data.train.max_images=120", "--set", "eval.every_epochs=0"]  # ~44 steps an epoch


def _records(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if r.get("kind") == kind]


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_preempted_member_is_requeued_and_resumes_bit_exactly(tiny_recipe_path, tmp_path,
                                                                slurm, eqm):
    out = tmp_path / "sweep"
    result = eqm("sweep", str(tiny_recipe_path), "--out", str(out), "--launcher", "slurm",
                 *PREEMPT)
    assert result.exit_code == 0, result.output
    run_dir = out / "seed=3"
    _wait(lambda: any(r["step"] >= 3 for r in _records(run_dir, "step")), 120,
          "the member's third step")
    assert (slurm / "jobs" / "1000.state").read_text() == "RUNNING"
    import submitit

    # submitit's own preemption: SIGTERM, then USR2, to every process of the task
    submitit.SlurmJob(folder=out / "slurm", job_id="1000")._interrupt()
    reference = tmp_path / "reference"  # trained uninterrupted while the member is requeued
    overrides = [text for text in PREEMPT if text != "--set"] + ["seed=3"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the member runs (OMP_NUM_THREADS=1)
    try:
        train(load_recipe(tiny_recipe_path, overrides), reference, progress=False)
    finally:
        torch.set_num_threads(threads)
    _wait(lambda: (slurm / "jobs" / "1000.state").read_text() in ("COMPLETED", "FAILED"),
          240, "the requeued member to finish")
    assert (slurm / "jobs" / "1000.state").read_text() == "COMPLETED"
    assert (slurm / "jobs" / "1000.restarts").read_text() == "1", "requeued once"

    steps = [r["step"] for r in _records(run_dir, "step")]
    assert steps == sorted(set(steps)), "no step was trained twice"
    per_epoch = _records(run_dir, "epoch")[0]["step"]
    (resume,) = _records(run_dir, "resume")
    assert 3 <= resume["step"] < per_epoch, "stopped mid-epoch, resumed where it stopped"
    assert steps == list(range(1, 2 * per_epoch + 1))

    got = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    want = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    for part in ("backbone", "head"):
        for name, tensor in want[part].items():
            assert torch.equal(got[part][name], tensor), f"{part}.{name} differs"
    rows = sweep_status(out)
    assert [(r.state, r.step) for r in rows] == [("done", 2 * per_epoch)]


@pytest.mark.slow
def test_an_array_runs_to_completion_and_a_rerun_submits_nothing(tiny_recipe_path, tmp_path,
                                                                 slurm, eqm):
    out = tmp_path / "sweep"
    args = ["sweep", str(tiny_recipe_path), "--grid", "loss.t1=0.4,0.6", "--out", str(out),
            "--set", "train.epochs=1", "--launcher", "slurm", "--array-parallelism", "2"]
    result = eqm(*args)
    assert result.exit_code == 0, result.output
    assert "#SBATCH --array=0-1%2\n" in (slurm / "scripts" / "1000.sh").read_text()
    _wait(lambda: all((slurm / "jobs" / f"1000_{i}.state").read_text() == "COMPLETED"
                      for i in range(2)), 240, "both array tasks")
    rows = sweep_status(out)
    assert [row.state for row in rows] == ["done", "done"]
    assert all(row.verification is not None and row.job_id for row in rows)

    again = eqm(*args)
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") == 2
    assert sorted(p.name for p in (slurm / "scripts").iterdir()) == ["1000.sh"]
    summary = json.loads((out / "sweep.json").read_text())
    assert [len(c["runs"]) for c in summary["configs"]] == [1, 1]
    assert "accuracy" in summary["configs"][0]["metrics"]
