"""`eqm sweep`: train a grid of recipe overrides x seeds, each a normal run directory.

Every member (see `eqmcli.experiments.grid`) is `python -m eqmcli train RECIPE --set ... --out
OUT/<member name> --no-progress`, run as its own process (in its own session, so a
Ctrl-C reaches the sweep only, which passes it on once: each training checkpoints at its
next step boundary and stops). Before a member starts, its folder decides what to do:

- no folder (or an empty one): train;
- a run directory whose `checkpoints/last.pt` holds the recipe's last epoch: finished,
  skipped;
- a run directory with an earlier checkpoint: `--resume`; with no checkpoint yet
  (stopped during set-up): `--force` (it holds nothing to keep);
- any other folder: refused (the member fails; nothing is touched).

A member that has run before (finished or partial) is only taken up again when its whole
resolved recipe equals its `recipe.yaml`: a re-run with another `--set` or an edited
recipe file is refused before anything runs, naming the keys that differ, so `sweep.json`
never records settings its runs did not use. `OUT` itself must be new, empty or a sweep's
folder (`.eqm-sweep` marker, `sweep.json`, `logs/` or only its member folders), and is
locked (`OUT/.eqm-lock`) while a sweep runs in it: a second sweep on the same `OUT` is
refused. A member whose run
is still locked by a process of an earlier sweep (stopping after that sweep died) is
waited for, up to `ADOPT_SECONDS`, then decided from its folder.

So a stopped sweep continues where it stopped when the same command runs again.
`--jobs N` runs N members at once: on CUDA one per GPU (`CUDA_VISIBLE_DEVICES`), on the
CPU with `OMP_NUM_THREADS` = CPUs / N each (an OMP_NUM_THREADS already set is kept).
With `analyze`, each finished member is also analyzed (`eqm analyze`, training split;
and `--split test` when the data has one) unless its analysis is newer than its
checkpoint. Output of every process goes to
`OUT/logs/<member>.log`; the summary to `OUT/sweep.json` (see `SweepResult.to_dict`).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqmcli.atomic import atomic_write_text, write_json
from eqmcli.errors import UserError, shown
from eqmcli.experiments.grid import GridAxis, Member, expand, folder_keys
from eqmcli.experiments.launchers import (
    ACTIVE_STATES,
    SLURM_FOLDER,
    MemberJob,
    SlurmSettings,
    job_states,
    submit_array,
    submitit_parameters,
)
from eqmcli.experiments.process_pool import Task, run_tasks
from eqmcli.experiments.results import read_run_results
from eqmcli.run.recipe import Recipe, parse_recipe_text
from eqmcli.run.rundir import LOCK, RunPaths
from eqmcli.train.run_state import (
    Change,
    RunLock,
    check_output_path,
    describe_changes,
    recipe_changes,
)
from eqmcli.train.setup import training_data_roots

SWEEP_FILE = "sweep.json"
SWEEP_MARKER = ".eqm-sweep"
LOGS = "logs"
ADOPT_SECONDS = 120.0  # how long a member still locked by an earlier sweep's process is awaited
INTERRUPTED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


@dataclass
class SweepOptions:
    """What `eqm sweep` was asked to do."""

    recipe: Path
    out: Path
    axes: list[GridAxis]
    seeds: int = 1
    sets: list[str] = field(default_factory=list)
    jobs: int | None = None
    device: str = "auto"
    analyze: bool = False
    head_classes: int = 80
    launcher: str = "local"  # or "slurm" (eqmcli.experiments.launchers)
    slurm: SlurmSettings | None = None


@dataclass
class MemberOutcome:
    """What happened to one member in this invocation (`status`: done, skipped, failed,
    interrupted or waiting; with Slurm also submitted, pending, running or requeued);
    `seconds` is this invocation's wall time for it, `job_id` its Slurm job."""

    member: Member
    run_dir: Path
    status: str = "waiting"
    action: str = ""
    seconds: float = 0.0
    return_code: int | None = None
    message: str = ""
    job_id: str | None = None


@dataclass
class MetricStats:
    """One metric over the seeds of a config: mean, sample std (ddof 1; None for n < 2)."""

    mean: float
    std: float | None
    n: int
    values: list[float]


@dataclass
class ConfigSummary:
    """One grid point: its assignments and each metric over its finished seeds."""

    config: str
    assignments: dict[str, Any]
    runs: list[str]
    metrics: dict[str, MetricStats]


@dataclass
class SweepResult:
    """The outcome of a sweep invocation; `stop_signal` is set when it was interrupted."""

    options: SweepOptions
    outcomes: list[MemberOutcome]
    configs: list[ConfigSummary]
    json_path: Path
    stop_signal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The `sweep.json` layout."""
        o = self.options
        return {
            "recipe": str(o.recipe),
            "out": str(o.out),
            "grid": {axis.key: list(axis.values) for axis in o.axes},
            "short_keys": folder_keys([axis.key for axis in o.axes]),
            "seeds": o.seeds,
            "sets": o.sets,
            "analyze": o.analyze,
            "launcher": o.launcher,
            "slurm": o.slurm.model_dump() if o.slurm is not None else None,
            "std": "sample standard deviation over seeds (ddof 1)",
            "interrupted": self.stop_signal,
            "members": [_outcome_dict(x) for x in self.outcomes],
            "configs": [_config_dict(c) for c in self.configs],
        }


def _outcome_dict(outcome: MemberOutcome) -> dict[str, Any]:
    m = outcome.member
    return {
        "name": m.name, "config": m.config, "seed": m.seed, "dir": str(outcome.run_dir),
        "assignments": dict(m.assignments), "overrides": list(m.overrides),
        "status": outcome.status, "action": outcome.action,
        "seconds": round(outcome.seconds, 1), "return_code": outcome.return_code,
        "message": outcome.message, "job_id": outcome.job_id, "epochs": m.recipe.train.epochs,
        "log": str(member_log(outcome.run_dir.parent, m)),
    }


def _config_dict(config: ConfigSummary) -> dict[str, Any]:
    return {
        "config": config.config, "assignments": config.assignments, "runs": config.runs,
        "metrics": {k: vars(v) for k, v in config.metrics.items()},
    }


# ------------------------------------------------------------------ member state
def checkpoint_epoch(path: Path) -> int | None:
    """The `epoch` stored in a checkpoint (memory-mapped: the weights are not read)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # unreadable: the training run will say why in one sentence
        return None


def member_state(run_dir: Path, epochs: int) -> str:
    """`new`, `done`, `partial` (resume), `restart` (no checkpoint yet) or `foreign`."""
    paths = RunPaths(run_dir)
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return "new"
    if not paths.is_run_directory():
        return "foreign"
    if not paths.last.is_file():
        return "restart"
    epoch = checkpoint_epoch(paths.last)
    return "done" if epoch is not None and epoch >= epochs else "partial"


def analysis_is_current(run_dir: Path) -> bool:
    """True when `analysis/summary.json` is at least as new as `checkpoints/last.pt`."""
    paths = RunPaths(run_dir)
    summary = paths.analysis_dir / "summary.json"
    return summary.is_file() and summary.stat().st_mtime >= paths.last.stat().st_mtime


def _has_test_split(member: Member) -> bool:
    source = member.recipe.data.train
    return bool(getattr(source, "test_images_per_class", 0) or
                getattr(source, "holdout_fraction", 0.0))


def member_log(out: Path, member: Member) -> Path:
    """`OUT/logs/<member>.log`: the output of every process of the member."""
    return out / LOGS / f"{member.name}.log"


def member_commands(
    options: SweepOptions, member: Member, state: str, distributed: Sequence[str] = ()
) -> list[list[str]]:
    """The processes to run for a member in `state` (training first, then analysis);
    `distributed` (torchrun's arguments, `eqmcli.experiments.launchers.distributed_prefix`) runs the
    training data-parallel."""
    eqm = [sys.executable, "-m", "eqmcli"]
    run_dir = str(options.out / member.name)
    commands = []
    if state != "done":
        sets = [part for text in member.overrides for part in ("--set", text)]
        flag = {"partial": ["--resume"], "restart": ["--force"]}.get(state, [])
        device = [] if options.device == "auto" else ["--device", options.device]
        trainer = [sys.executable, *distributed, "-m", "eqmcli"]
        commands.append([*trainer, "train", str(options.recipe), *sets, "--out", run_dir,
                         "--no-progress", *device, *flag])
    if options.analyze and (state != "done" or not analysis_is_current(Path(run_dir))):
        analyze = [*eqm, "analyze", run_dir, "--head-classes", str(options.head_classes),
                   "--json"]
        if options.device != "auto":
            analyze += ["--device", options.device]
        commands.append(analyze)
        if _has_test_split(member):
            commands.append([*analyze, "--split", "test"])
    return commands


def trained_recipe(options: SweepOptions, member: Member) -> Recipe:
    """The recipe `eqm train` resolves for a member (its overrides, then `--device`)."""
    if options.device == "auto":
        return member.recipe
    train = member.recipe.train.model_copy(update={"device": options.device})
    return member.recipe.model_copy(update={"train": train})


def stored_recipe_changes(run_dir: Path, recipe: Recipe) -> list[Change]:
    """The keys where `run_dir/recipe.yaml` differs from `recipe` (all of them, sorted);
    an unreadable `recipe.yaml` is one `UserError` naming it."""
    path = RunPaths(run_dir).recipe
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    return recipe_changes(parse_recipe_text(text, source=str(path)), recipe)


def refuse_changed_members(changed: list[tuple[Path, list[Change]]]) -> None:
    """One sentence for members whose stored recipe is not what this sweep would run."""
    if not changed:
        return
    run_dir, changes = changed[0]
    more = f" (and {len(changed) - 1} other run(s))" if len(changed) > 1 else ""
    shown_changes = describe_changes(changes[:3]) + (
        f" and {len(changes) - 3} more" if len(changes) > 3 else "")
    raise UserError(
        f"{run_dir}{more} was trained with other settings than this sweep gives it "
        f"({shown_changes}); run the sweep with the settings it was started with, or "
        "choose another --out"
    )


def is_sweep_folder(out: Path) -> bool:
    """True for a folder an `eqm sweep` wrote (its marker, `sweep.json` or `logs/`)."""
    return (out / SWEEP_MARKER).is_file() or (out / SWEEP_FILE).is_file() or (
        out / LOGS).is_dir()


def check_sweep_folder(options: SweepOptions, members: Sequence[Member]) -> None:
    """Refuse an `--out` that is a file, a run directory, a folder eqm did not write (a data
    folder, say: entries that are neither a sweep's files nor this sweep's member folders),
    lies inside the members' training data, or holds a sweep of other keys."""
    out = options.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; the sweep needs a folder")
    roots = {root for member in members for root in training_data_roots(member.recipe)}
    check_output_path(out, sorted(roots))
    if not out.is_dir() or not any(out.iterdir()):
        return
    if RunPaths(out).is_run_directory():
        raise UserError(f"--out {out} is a run directory of 'eqm train'; choose another folder")
    names = {member.name for member in members}
    if not is_sweep_folder(out) and not all(entry.name in names for entry in out.iterdir()):
        raise UserError(
            f"--out {out} holds files that no eqm sweep wrote; choose a new or empty folder"
        )
    stored = read_sweep_file(out)
    keys = sorted(axis.key for axis in options.axes)
    if stored is not None and sorted(stored.get("grid", {})) != keys:
        raise UserError(
            f"--out {out} holds another sweep (grid keys "
            f"{shown(sorted(stored.get('grid', {})))}, here {shown(keys)}); choose another --out"
        )


#: The types of sweep.json's fields that readers use (`SweepResult.to_dict` writes them all).
SWEEP_FIELDS: dict[str, type] = {"grid": dict, "configs": list, "members": list}


def read_sweep_file(out: Path, required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """`OUT/sweep.json` as a dict, None when absent: the one reader of the file (`eqm sweep`,
    `eqm sweep status`, `eqm compare`, `eqm plot`). A file that is not a JSON object, lacks
    a `required` field, has a `grid`, `configs` or `members` of another type, or a member
    that does not name its run folder, is one `UserError`."""
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path} is not readable JSON ({error}); move it away") from None
    if not isinstance(data, dict):
        data = {"grid": None}
    problems = [key for key in required if key not in data] + [
        key for key, kind in SWEEP_FIELDS.items() if key in data and not isinstance(data[key], kind)
    ]
    if not problems and not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"]
        and Path(m["name"]).name == m["name"] for m in data.get("members", [])
    ):
        problems = ["members (each must name its run folder)"]
    if problems:
        raise UserError(f"{path} is not a sweep summary written by 'eqm sweep' (no valid "
                        f"{', '.join(problems)}); move it away or rerun 'eqm sweep'")
    return data


def require_sweep_file(out: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """`read_sweep_file` for a folder that must be a sweep's."""
    data = read_sweep_file(out, required)
    if data is None:
        raise UserError(f"{out} holds no {SWEEP_FILE}; is it the --out of an eqm sweep?")
    return data


def lock_sweep_folder(out: Path) -> RunLock:
    """Create `out`, mark it as a sweep's, and hold its lock (a second sweep is refused)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out / LOCK, what="sweep folder")
        lock.acquire()
    except OSError as error:
        raise UserError(f"cannot use sweep folder {out}: {error.strerror}") from None
    marker = out / SWEEP_MARKER
    if not marker.is_file():
        atomic_write_text(marker, "made by 'eqm sweep'; see eqmcli/experiments/sweep.py\n")
    return lock


def run_is_locked(run_dir: Path) -> bool:
    """True while another process holds the run's lock (`RUN/.eqm-lock`)."""
    try:
        fd = os.open(RunPaths(run_dir).lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def wait_for_unlocked(run_dir: Path, seconds: float) -> bool:
    """Wait up to `seconds` for a run's lock to be released; False if it is still held."""
    deadline = time.monotonic() + seconds
    while run_is_locked(run_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


# ------------------------------------------------------------------- running
def _slot_environment(options: SweepOptions, slots: int) -> Callable[[int], dict[str, str]]:
    """Each slot's environment: one GPU per slot on CUDA; on the CPU, CPUs / slots threads
    (one each with --jobs 2 on 2 cores) unless OMP_NUM_THREADS is set already."""
    gpus = torch.cuda.device_count() if options.device in ("auto", "cuda") else 0
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // slots))

    def env(slot: int) -> dict[str, str]:
        found = dict(os.environ)
        if gpus:
            found["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        else:
            found.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        return found

    return env


def default_jobs(device: str) -> int:
    """One member at a time on a CPU; one per GPU on CUDA."""
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    return max(1, gpus)


def last_line(log: Path) -> str:
    """The last non-empty line of a log (the error sentence of a failed command)."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _finish(outcome: MemberOutcome, task: Task | None) -> None:
    """Fill an outcome from its task (None: nothing had to run)."""
    if task is None:
        outcome.status = "skipped"
        return
    outcome.seconds, outcome.return_code = task.seconds, task.return_code
    if task.finished:
        outcome.status = "done"
    elif task.return_code is None:
        outcome.status = "waiting"
    elif task.return_code in INTERRUPTED_CODES:
        outcome.status = "interrupted"
    else:
        outcome.status = "failed"
        outcome.message = last_line(task.log)


def run_sweep(
    options: SweepOptions,
    report: Callable[[MemberOutcome], None] | None = None,
    started: Callable[[MemberOutcome, Path], None] | None = None,
) -> SweepResult:
    """Expand the grid, run what is not finished, summarize into `OUT/sweep.json`.

    `report(outcome)` is called as each member ends (or is found finished),
    `started(outcome, log)` as its first process starts.
    """
    if options.jobs is not None and options.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {options.jobs}")
    members = expand(options.recipe, options.axes, options.seeds, options.sets)
    check_launcher(options, members)
    check_sweep_folder(options, members)
    lock = lock_sweep_folder(options.out)
    try:
        return _run_locked(options, members, report, started)
    finally:
        lock.release()


def _run_locked(
    options: SweepOptions,
    members: list[Member],
    report: Callable[[MemberOutcome], None] | None,
    started: Callable[[MemberOutcome, Path], None] | None,
) -> SweepResult:
    """`run_sweep` once the sweep folder is checked and locked."""
    slots = options.jobs or default_jobs(options.device)
    # a Slurm member locked by its running job is not waited for: Slurm says it is alive
    adopt_seconds = ADOPT_SECONDS if options.launcher == "local" else 0.0
    states, changed = {}, []
    for member in members:
        run_dir = options.out / member.name
        if run_is_locked(run_dir) and not wait_for_unlocked(run_dir, adopt_seconds):
            states[member.name] = "busy"
            continue
        states[member.name] = state = member_state(run_dir, member.recipe.train.epochs)
        if state in ("done", "partial"):
            differences = stored_recipe_changes(run_dir, trained_recipe(options, member))
            if differences:
                changed.append((run_dir, differences))
    refuse_changed_members(changed)
    if options.launcher == "slurm":
        return _submit(options, members, states, report)
    outcomes, tasks = [], {}
    for member in members:
        run_dir = options.out / member.name
        outcome = MemberOutcome(member, run_dir)
        state = states[member.name]
        outcomes.append(outcome)
        if state in ("foreign", "busy"):
            outcome.status = "failed"
            outcome.message = (
                f"{run_dir} exists and is not a run directory; left untouched"
                if state == "foreign" else
                f"{run_dir} is in use by another eqm process; left untouched"
            )
            continue
        outcome.action = {"new": "train", "partial": "resume", "restart": "restart"}.get(state, "")
        commands = member_commands(options, member, state)
        log = member_log(options.out, member)
        if commands:
            tasks[member.name] = Task(member.name, commands, log)
            continue
        _finish(outcome, None)
        if report is not None:
            report(outcome)
    by_name = {o.member.name: o for o in outcomes}

    def done(task: Task) -> None:
        _finish(by_name[task.name], task)
        if report is not None:
            report(by_name[task.name])

    def start(task: Task) -> None:
        if started is not None:
            started(by_name[task.name], task.log)

    stop = run_tasks(list(tasks.values()), slots, _slot_environment(options, slots), done,
                     start)
    for outcome in outcomes:
        if outcome.status == "waiting":
            _finish(outcome, tasks.get(outcome.member.name))
    result = SweepResult(
        options, outcomes, summarize_configs(outcomes), options.out / SWEEP_FILE, stop
    )
    write_json(result.json_path, result.to_dict())
    return result


def check_launcher(options: SweepOptions, members: Sequence[Member]) -> None:
    """Refuse, before anything is created, launcher settings that cannot work: an unknown
    launcher, Slurm without submitit or with an unknown `--slurm-option`, GPUs for a
    member forced onto the CPU."""
    if options.launcher not in ("local", "slurm"):
        raise UserError(f"--launcher {shown(options.launcher)} is not one of local, slurm")
    if options.launcher != "slurm":
        return
    settings = options.slurm or SlurmSettings()
    submitit_parameters(settings, "check")
    if settings.gpus_per_job:
        on_cpu = options.device == "cpu" or any(
            m.recipe.train.device == "cpu" for m in members)
        if on_cpu:
            where = "--device cpu" if options.device == "cpu" else "train.device: cpu"
            raise UserError(
                f"--gpus-per-job {settings.gpus_per_job} asks for GPUs, but the members run "
                f"on the CPU ({where}); set train.device to auto or cuda, or drop the option"
            )


def _submit(
    options: SweepOptions,
    members: list[Member],
    states: dict[str, str],
    report: Callable[[MemberOutcome], None] | None,
) -> SweepResult:
    """Submit every member that is neither finished nor alive in Slurm as one job array."""
    folder = options.out / SLURM_FOLDER
    previous = {
        entry.get("name"): entry.get("job_id")
        for entry in (read_sweep_file(options.out) or {}).get("members", [])
        if isinstance(entry, dict) and entry.get("job_id")
    }
    alive = {job: state for job, state in job_states(sorted(set(previous.values())))
             .items() if state in ACTIVE_STATES}
    outcomes, waiting = [], []
    for member in members:
        outcome = MemberOutcome(member, options.out / member.name)
        outcomes.append(outcome)
        state, job = states[member.name], previous.get(member.name)
        if state == "done":
            outcome.status = "skipped"
        elif job in alive:
            outcome.status, outcome.job_id = ACTIVE_STATES[alive[job]], job
        elif state in ("foreign", "busy"):
            outcome.status = "failed"
            outcome.message = f"{outcome.run_dir} is not a run this sweep may train; left untouched"
        else:
            outcome.action = {"partial": "resume", "restart": "restart"}.get(state, "train")
            waiting.append(outcome)
    if waiting:
        # absolute paths: a job may start in another folder (e.g. --slurm-option chdir=...)
        anywhere = replace(options, recipe=options.recipe.resolve(), out=options.out.resolve())
        job_ids = submit_array(options.slurm or SlurmSettings(), folder,
                               f"eqm-{anywhere.out.name}",
                               [MemberJob(anywhere, o.member) for o in waiting])
        for outcome, job_id in zip(waiting, job_ids, strict=True):
            outcome.status, outcome.job_id = "submitted", job_id
    if report is not None:
        for outcome in outcomes:
            report(outcome)
    result = SweepResult(options, outcomes, summarize_configs(outcomes), options.out / SWEEP_FILE)
    write_json(result.json_path, result.to_dict())
    return result


# ------------------------------------------------------------------- summary
def metric_stats(values: list[float]) -> MetricStats:
    """Mean and sample standard deviation (ddof 1; None for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else None
    return MetricStats(mean=float(array.mean()), std=std, n=int(array.size), values=list(values))


def summarize_configs(outcomes: list[MemberOutcome]) -> list[ConfigSummary]:
    """Per config, each metric over its finished members (see `eqmcli.experiments.results`)."""
    configs: dict[str, ConfigSummary] = {}
    collected: dict[str, dict[str, list[float]]] = {}
    for outcome in outcomes:
        member = outcome.member
        summary = configs.setdefault(
            member.config, ConfigSummary(member.config, dict(member.assignments), [], {})
        )
        if outcome.status not in ("done", "skipped"):
            continue
        summary.runs.append(member.name)
        values = collected.setdefault(member.config, {})
        for name, value in read_run_results(outcome.run_dir).metrics.items():
            values.setdefault(name, []).append(value)
    for name, summary in configs.items():
        summary.metrics = {k: metric_stats(v) for k, v in collected.get(name, {}).items()}
    return list(configs.values())
