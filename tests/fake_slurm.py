"""Stand-ins for `sbatch`, `srun`, `sacct`, `scontrol` and `scancel` that run jobs locally.

`install(folder)` writes the five commands into `folder/bin` (put it first on PATH) and
keeps their state in `folder/state`: `sbatch` records each script as `scripts/<id>.sh`
and (unless `state/hold` exists) starts a runner that executes the array's tasks, at most
`%K` at a time, with Slurm's environment variables (with `state/refuse`, it fails with
that file's text); `srun` drops its options, writes its
PID and `exec`s the command with its output appended to `--output`; `sacct` prints
`JobID|State|NodeList`; `scontrol requeue` marks a task to run again when it exits;
`scancel --signal SIG` signals every process of a task (its process group). Good enough
for submitit's executor and job environment; not a scheduler.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "scontrol", "scancel")


def install(folder: Path) -> Path:
    """Write the commands into `folder/bin`; returns that folder (for PATH)."""
    bin_dir = folder / "bin"
    (folder / "state" / "jobs").mkdir(parents=True, exist_ok=True)
    (folder / "state" / "scripts").mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\nFAKE_SLURM_STATE={folder / 'state'} exec "
                        f"{sys.executable} {Path(__file__).resolve()} {name} \"$@\"\n")
        path.chmod(0o755)
    return bin_dir


def _state() -> Path:
    return Path(os.environ["FAKE_SLURM_STATE"])


def _set(key: str, state: str) -> None:
    (_state() / "jobs" / f"{key}.state").write_text(state)


def _get(key: str) -> str:
    path = _state() / "jobs" / f"{key}.state"
    return path.read_text() if path.is_file() else ""


def _array(script: str) -> tuple[int | None, int]:
    """(number of array tasks or None, parallelism) from the script's #SBATCH lines."""
    match = re.search(r"^#SBATCH --array=0-(\d+)%(\d+)$", script, re.MULTILINE)
    return (None, 1) if match is None else (int(match.group(1)) + 1, int(match.group(2)))


def sbatch(args: list[str]) -> None:
    refuse = _state() / "refuse"
    if refuse.exists():
        sys.exit(f"sbatch: error: {refuse.read_text()}")
    script_path = Path(args[-1])
    script = script_path.read_text()
    counter = _state() / "next_id"
    job = int(counter.read_text()) if counter.is_file() else 1000
    counter.write_text(str(job + 1))
    (_state() / "scripts" / f"{job}.sh").write_text(script)
    count, _ = _array(script)
    for key in _keys(job, count):
        _set(key, "PENDING")
    if not (_state() / "hold").exists():
        subprocess.Popen([sys.executable, __file__, "run", str(job)], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"Submitted batch job {job}")


def _keys(job: int, count: int | None) -> list[str]:
    return [str(job)] if count is None else [f"{job}_{i}" for i in range(count)]


def run(args: list[str]) -> None:
    job = int(args[0])
    script = _state() / "scripts" / f"{job}.sh"
    count, parallel = _array(script.read_text())
    queue = list(range(count)) if count is not None else [None]
    running: dict[str, subprocess.Popen] = {}
    while queue or running:
        while queue and len(running) < parallel:
            task = queue.pop(0)
            key = str(job) if task is None else f"{job}_{task}"
            env = {**os.environ, "SLURM_JOB_ID": str(job if task is None else job + 1 + task),
                   "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                   "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
                   "SLURM_JOB_NODELIST": "localhost", "FAKE_SLURM_KEY": key}
            if task is not None:
                env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(task))
            _set(key, "RUNNING")
            running[key] = subprocess.Popen(["bash", str(script)], env=env)
        time.sleep(0.1)
        for key, process in list(running.items()):
            if process.poll() is None:
                continue
            del running[key]
            flag = _state() / "jobs" / f"{key}.requeue"
            if flag.exists():
                flag.unlink()
                (_state() / "jobs" / f"{key}.restarts").write_text(
                    str(int(_read(f"{key}.restarts") or 0) + 1))
                _set(key, "PENDING")
                queue.append(None if "_" not in key else int(key.split("_")[1]))
            elif _get(key) != "CANCELLED":
                _set(key, "COMPLETED" if process.returncode == 0 else "FAILED")


def _read(name: str) -> str:
    path = _state() / "jobs" / name
    return path.read_text() if path.is_file() else ""


def srun(args: list[str]) -> None:
    output = None
    while args and args[0].startswith("--"):
        option = args.pop(0)
        if option in ("--output", "--error"):
            value = args.pop(0)
            if option == "--output":
                output = value
    key = os.environ["FAKE_SLURM_KEY"]
    os.setpgid(0, 0)  # the task's processes form one group, as Slurm signals them
    (_state() / "jobs" / f"{key}.pid").write_text(str(os.getpid()))
    if output is not None:
        job, _, task = key.partition("_")
        path = (output.replace("%A", job).replace("%a", task).replace("%j", key)
                .replace("%t", "0"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    os.execvp(args[0], args)


def sacct(args: list[str]) -> None:
    wanted = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for path in sorted((_state() / "jobs").glob("*.state")):
        key = path.name[: -len(".state")]
        if key.split("_")[0] in wanted:
            print(f"{key}|{path.read_text()}|localhost")


def scontrol(args: list[str]) -> None:
    if args[:1] == ["requeue"]:
        (_state() / "jobs" / f"{args[1]}.requeue").write_text("")
        _set(args[1], "REQUEUED")


def scancel(args: list[str]) -> None:
    key = args[0]
    name = args[args.index("--signal") + 1] if "--signal" in args else "SIGTERM"
    if "--signal" not in args:
        _set(key, "CANCELLED")
    signum = getattr(signal, name if name.startswith("SIG") else "SIG" + name)
    os.killpg(int(_read(f"{key}.pid")), signum)  # every process of the task


if __name__ == "__main__":
    {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scontrol": scontrol,
     "scancel": scancel, "run": run}[sys.argv[1]](sys.argv[2:])
