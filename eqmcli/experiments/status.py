"""`eqm sweep status OUT`: where each member of a sweep stands, from its folder and Slurm.

A member's state is, in this order: `done` (its checkpoint holds the last epoch); the
Slurm job's state while it is alive (`pending`, `running`, or `requeued`: requeued or
preempted, or pending again with a checkpoint from an earlier start); `running` for a
local member whose run is locked by a training process; `failed` for a member whose
job ended without finishing it (or that the last local sweep marked failed), with its
log's last line; `interrupted` (a partial run no job is working on: re-running the same
`eqm sweep` resumes it); `pending` (nothing started). Progress (epoch, step) and the last
verification accuracy come from the run's `metrics.jsonl`. The rows are also written into
`OUT/sweep.json` (each member's `state`, `epoch`, `step`, `verification`, `message`)
unless a sweep holds the folder's lock at that moment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eqmcli.atomic import write_json
from eqmcli.errors import UserError
from eqmcli.experiments.launchers import ACTIVE_STATES, job_states
from eqmcli.experiments.sweep import (
    SWEEP_FILE,
    last_line,
    member_state,
    require_sweep_file,
    run_is_locked,
)
from eqmcli.run.rundir import LOCK, RunPaths
from eqmcli.train.run_state import RunLock

TAIL_BYTES = 1 << 18  # how much of the end of metrics.jsonl is read for the progress


@dataclass
class MemberStatus:
    """One row of `eqm sweep status`; `verification` is a fraction, None before any."""

    name: str
    state: str
    job_id: str | None
    epoch: float | None
    step: int | None
    verification: float | None
    log: str
    message: str = ""


@dataclass
class Progress:
    """The last step/epoch record and the last verification accuracy of a run."""

    epoch: float | None = None
    step: int | None = None
    verification: float | None = None


def run_progress(run_dir: Path) -> Progress:
    """Read the end of `RUN/metrics.jsonl` (a cut-off first or last line is skipped)."""
    progress = Progress()
    for record in RunPaths(run_dir).metric_records(tail_bytes=TAIL_BYTES):
        if record.get("kind") in ("step", "epoch", "eval") and "step" in record:
            progress.step = int(record["step"])
            progress.epoch = record.get("epoch", progress.epoch)
        if record.get("kind") == "eval" and isinstance(record.get("accuracy"), float):
            progress.verification = record["accuracy"]
    return progress


def _state(entry: dict[str, Any], run_dir: Path, slurm_state: str | None) -> tuple[str, str]:
    """(state, message) of one member; see the module docstring for the order."""
    epochs = int(entry.get("epochs") or 0)
    folder = member_state(run_dir, epochs) if epochs else "new"
    log = Path(str(entry.get("log", "")))
    if folder == "done":
        return "done", ""
    if slurm_state in ACTIVE_STATES:
        state = ACTIVE_STATES[slurm_state]
        return ("requeued" if state == "pending" and folder == "partial" else state), ""
    if slurm_state is None and run_is_locked(run_dir):
        return "running", ""
    if slurm_state is not None or entry.get("status") == "failed":
        why = last_line(log) if log.is_file() else ""
        if slurm_state in (None, "FAILED", "COMPLETED"):  # the log's last line says why
            fallback = f"Slurm says {slurm_state}" if slurm_state else "the last sweep said failed"
            reason = why or fallback
        else:  # TIMEOUT, CANCELLED, OUT_OF_MEMORY, NODE_FAIL, ...: Slurm's word first
            reason = f"Slurm says {slurm_state}" + (f"; the log ends: {why}" if why else "")
        return "failed", f"{reason} (log: {log})"
    return ("interrupted" if folder == "partial" else "pending"), ""


def sweep_status(out: Path) -> list[MemberStatus]:
    """One `MemberStatus` per member of the sweep in `out` (and into `out/sweep.json`)."""
    data = require_sweep_file(out)
    entries = data.get("members", [])
    jobs = job_states(sorted({str(e["job_id"]) for e in entries if e.get("job_id")}))
    rows = []
    for entry in entries:
        run_dir = Path(str(entry.get("dir") or out / str(entry["name"])))
        job = str(entry["job_id"]) if entry.get("job_id") else None
        state, message = _state(entry, run_dir, jobs.get(job) if job else None)
        progress = run_progress(run_dir)
        rows.append(MemberStatus(
            name=str(entry["name"]), state=state, job_id=job, epoch=progress.epoch,
            step=progress.step, verification=progress.verification,
            log=str(entry.get("log", "")), message=message,
        ))
    _record(out, data, rows)
    return rows


def _record(out: Path, data: dict[str, Any], rows: list[MemberStatus]) -> None:
    """Write the rows into `sweep.json`, unless a sweep is running there right now."""
    lock = RunLock(out / LOCK, what="sweep folder")
    try:
        lock.acquire()
    except UserError:
        return
    try:
        by_name = {row.name: row for row in rows}
        for entry in data.get("members", []):
            row = by_name.get(entry.get("name")) if isinstance(entry, dict) else None
            if row is not None:
                entry.update({k: v for k, v in asdict(row).items() if k not in ("name", "log")})
        write_json(out / SWEEP_FILE, data)
    finally:
        lock.release()
