"""`eqm sweep --launcher slurm`: the members of a sweep as one Slurm job array, via submitit.

`submitit` (the `[cluster]` extra) writes the `sbatch` script, submits the array and reads
job states back (`sacct`); each array task unpickles one `MemberJob` and calls it. The job
runs the member's commands (`eqmcli.experiments.sweep.member_commands`, decided from its folder when
the task starts: new, resume or skip) as a child process, its output appended to
`OUT/logs/<member>.log`:

- `G > 1` GPUs per member (`--gpus-per-job`): the training runs under `torchrun
  --nproc-per-node G` (`python -m torch.distributed.run`), standalone on one node or, with
  `--nodes N`, with a c10d rendezvous on the job's first host (one submitit task per node).
- Slurm signals every process of a task (its process group or cgroup), so the training
  runs in the task's process group and ignores `USR2`: it receives Slurm's SIGTERM itself,
  exactly once, and the job side never passes a second one on (a second SIGTERM would
  stop the trainer at once, without its checkpoint).
- Preemption and time limits: Slurm sends `USR2` (`--signal=USR2@signal_delay_s`) before
  the time runs out (and, as submitit expects, after the SIGTERM of a preemption);
  submitit calls `MemberJob.checkpoint`, which sends the training one SIGTERM unless the
  task has had one already (the trainer checkpoints at its next step boundary and exits),
  waits for it to end, and hands submitit a fresh `MemberJob` of the same member, which
  it requeues (`scontrol requeue`, at most `max_requeues` times for time limits). The
  requeued task finds a partial run and resumes it (`--resume`), bit-exactly.
- A SIGTERM alone (`scancel`, or a preemption without `USR2`) stops the training at its
  checkpoint; the member fails with a sentence saying so, and the next `eqm sweep` (or a
  cluster that requeues preempted jobs itself) resumes it.
- A real error fails the task (the log's last line is its sentence in `eqm sweep status`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eqmcli.errors import UserError, shown
from eqmcli.experiments.process_pool import die_with_parent
from eqmcli.run.recipe import recipe_mapping

if TYPE_CHECKING:
    from eqmcli.experiments.grid import Member
    from eqmcli.experiments.sweep import SweepOptions

LAUNCHERS = ("local", "slurm")
SLURM_FOLDER = "slurm"  # OUT/slurm: submitit's scripts, pickles and task logs
#: Slurm job states that are still alive, and what `eqm sweep status` calls them.
ACTIVE_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "requeued",
    "REQUEUE_FED": "requeued", "REQUEUE_HOLD": "requeued", "RESIZING": "running",
    "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "running",
    "PREEMPTED": "requeued", "STOPPED": "running", "SIGNALING": "running",
}
#: submitit parameters the launcher options set; `--slurm-option` may not set them again.
OWN_PARAMETERS = {
    "partition": "--partition", "gpus_per_node": "--gpus-per-job",
    "cpus_per_task": "--cpus-per-job", "mem": "--mem", "time": "--time",
    "array_parallelism": "--array-parallelism", "nodes": "--nodes",
    "ntasks_per_node": "--nodes (one task per node)", "job_name": "the sweep folder's name",
    "signal_delay_s": "signal_delay_s", "stderr_to_stdout": "the launcher",
}
_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.IGNORECASE)


class SlurmSettings(BaseModel):
    """The cluster settings of a sweep (options or `--launcher-config`); units in names."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    gpus_per_job: int = Field(0, ge=0, le=64)
    cpus_per_job: int | None = Field(None, ge=1, le=4096)
    mem: str | None = None
    time: str = "24:00:00"
    array_parallelism: int = Field(256, ge=1, le=100_000)
    nodes: int = Field(1, ge=1, le=1024)
    signal_delay_s: int = Field(120, ge=10, le=3600)
    max_requeues: int = Field(3, ge=0, le=100)
    slurm_options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("time")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_minutes(value)
        return value

    @field_validator("mem")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None:
            memory_gb(value)
        return value


class LauncherConfig(SlurmSettings):
    """A `--launcher-config` file: the launcher's name and its settings."""

    launcher: str = "local"

    @field_validator("launcher")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in LAUNCHERS:
            raise ValueError(f"must be one of {', '.join(LAUNCHERS)}")
        return value


def duration_minutes(text: str) -> int:
    """Slurm's `--time` forms (`MM`, `HH:MM:SS`, `D-HH:MM:SS`, `MM:SS`) in whole minutes."""
    match = _DURATION.match(str(text).strip())
    if match is None:
        raise UserError(f"--time {shown(text)} is not a duration like 04:00:00 or 2-00:00:00")
    days, first, second, third = match.groups()
    if third is not None:
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:
        seconds = (int(first) * 3600 + int(second) * 60) if days else int(first) * 60 + int(
            second)
    else:
        seconds = int(first) * (3600 if days else 60)
    seconds += int(days or 0) * 86400
    if seconds < 60:
        raise UserError(f"--time {shown(text)} is shorter than a minute")
    return math.ceil(seconds / 60)


def memory_gb(text: str) -> float:
    """`64G`, `64GB`, `500M`, `1T` or a plain number of gigabytes -> gigabytes."""
    match = _MEMORY.match(str(text).strip())
    if match is None or float(match.group(1)) <= 0:
        raise UserError(f"--mem {shown(text)} is not a memory size like 64G or 500M")
    scale = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0, "": 1.0}
    return float(match.group(1)) * scale[match.group(2).upper()]


def slurm_memory(text: str) -> str:
    """`--mem` as sbatch writes it: whole gigabytes (`64G`) or else megabytes (`500M`)."""
    gigabytes = memory_gb(text)
    if gigabytes == int(gigabytes):
        return f"{int(gigabytes)}G"
    return f"{math.ceil(gigabytes * 1024)}M"


def parse_slurm_options(texts: list[str]) -> dict[str, str]:
    """`key=value` texts -> a dict (keys with `-` or `_`); a text without `=` is refused."""
    options = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-option {shown(text)} is not of the form key=value")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def read_launcher_config(path: Path) -> LauncherConfig:
    """A `--launcher-config` YAML file (bounded reader; unknown keys named)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--launcher-config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read --launcher-config {path}: {error}") from None
    data = recipe_mapping(text, str(path))
    try:
        return LauncherConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        problem = ("is not a known setting" if first["type"] == "extra_forbidden"
                   else str(first["msg"]).removeprefix("Value error, "))
        raise UserError(f"{path}: {shown(key)} {problem}") from None


def import_submitit() -> Any:
    """The `submitit` module, or one sentence saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise UserError(
            "--launcher slurm needs submitit: pip install 'eqmcli[cluster]'"
        ) from None
    return submitit


def submitit_parameters(settings: SlurmSettings, job_name: str) -> dict[str, Any]:
    """The `SlurmExecutor.update_parameters` of a sweep; a `--slurm-option` that submitit
    does not know, or that a launcher option sets, is a `UserError` naming it, and so is
    a machine without submitit or `srun`."""
    import_submitit()
    if shutil.which("srun") is None:
        raise UserError(
            "--launcher slurm found no 'srun' on PATH; run the sweep on a Slurm login node"
        )
    from submitit.slurm.slurm import _get_default_parameters

    known = set(_get_default_parameters())
    for key in settings.slurm_options:
        if key in OWN_PARAMETERS:
            raise UserError(f"--slurm-option {key} is set by {OWN_PARAMETERS[key]}; use that")
        if key not in known:
            valid = ", ".join(sorted(known - set(OWN_PARAMETERS)))
            raise UserError(f"unknown --slurm-option key {shown(key)}; submitit knows: {valid}")
    parameters: dict[str, Any] = {
        "job_name": job_name, "time": duration_minutes(settings.time),
        "nodes": settings.nodes, "ntasks_per_node": 1,
        "array_parallelism": settings.array_parallelism,
        "signal_delay_s": settings.signal_delay_s, "stderr_to_stdout": True,
    }
    optional = {"partition": settings.partition, "cpus_per_task": settings.cpus_per_job,
                "gpus_per_node": settings.gpus_per_job or None,
                "mem": slurm_memory(settings.mem) if settings.mem else None}
    parameters.update({k: v for k, v in optional.items() if v is not None})
    parameters.update(settings.slurm_options)
    return parameters


def slurm_executor(settings: SlurmSettings, folder: Path, job_name: str) -> Any:
    """A submitit `SlurmExecutor` writing into `folder`, with the sweep's parameters."""
    parameters = submitit_parameters(settings, job_name)  # checks submitit and srun first
    executor = import_submitit().SlurmExecutor(folder=folder,
                                               max_num_timeout=settings.max_requeues)
    executor.update_parameters(**parameters)
    return executor


def submit_array(settings: SlurmSettings, folder: Path, job_name: str,
                 callables: list[Any]) -> list[str]:
    """Submit `callables` as one job array (one plain job for a single one); returns the
    job ids (`<array>_<task>`). A refused submission is one sentence with sbatch's reason."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    executor = slurm_executor(settings, folder, job_name)
    try:  # submitit also prints sbatch's complaint; it is in the sentence instead
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            jobs = [executor.submit(job) for job in callables]
    except (FailedJobError, FailedSubmissionError, OSError) as error:
        lines = [line for line in str(error).splitlines() if line.strip()] or ["no reason given"]
        raise UserError(f"sbatch refused the job array: {lines[-1][:300]}") from None
    return [str(job.job_id) for job in jobs]


def job_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job id, from one `sacct` call through submitit's watcher
    (`UNKNOWN` for a job `sacct` does not know, or when it cannot be asked)."""
    if not job_ids:
        return {}
    import_submitit()
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher(delay_s=600)
    for job_id in job_ids:
        watcher.register_job(job_id)
    watcher.update()
    return {job_id: watcher.get_state(job_id, mode="cache") for job_id in job_ids}


# ------------------------------------------------------------------ inside the job
class MemberFailed(RuntimeError):
    """A member's command exited with an error; the message is its log's last line."""


def node_rank() -> int:
    """This task's node within its job (submitit's job environment; 0 outside a job)."""
    from submitit import JobEnvironment

    try:
        return int(JobEnvironment().node)
    except (RuntimeError, KeyError, ValueError):
        return 0


def distributed_prefix(gpus: int, nodes: int) -> list[str]:
    """The `torchrun` arguments for a member with `gpus` GPUs on each of `nodes` nodes
    (empty for one process); multi-node members meet on the job's first host."""
    if gpus <= 1 and nodes <= 1:
        return []
    prefix = ["-m", "torch.distributed.run", f"--nproc-per-node={max(gpus, 1)}"]
    if nodes <= 1:
        return [*prefix, "--standalone"]
    from submitit import JobEnvironment

    environment = JobEnvironment()
    return [*prefix, f"--nnodes={nodes}", f"--node-rank={node_rank()}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={environment.hostnames[0]}:29400",
            f"--rdzv-id={environment.job_id}"]


class MemberJob:
    """One sweep member as a submitit callable (picklable; checkpointable for requeue)."""

    def __init__(self, options: SweepOptions, member: Member) -> None:
        self.options = options
        self.member = member
        self._process: subprocess.Popen | None = None
        self._signalled = False

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options, "member": self.member}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["options"], state["member"])

    def __call__(self) -> str:
        """Run the member's commands; returns the action taken (`train`, `resume`, ...)."""
        from eqmcli.experiments.sweep import LOGS, last_line, member_commands, member_state

        options, member = self.options, self.member
        run_dir = options.out / member.name
        state = member_state(run_dir, member.recipe.train.epochs)
        if state == "foreign":
            raise MemberFailed(f"{run_dir} exists and is not a run directory; left untouched")
        slurm = options.slurm or SlurmSettings()
        prefix = distributed_prefix(slurm.gpus_per_job, slurm.nodes)
        commands = member_commands(options, member, state, prefix)
        node = node_rank() if slurm.nodes > 1 else 0
        if node:  # the other nodes join the training only; node 0 also analyzes
            commands = commands[:1] if state != "done" else []
        suffix = f".node{node}" if node else ""
        log = options.out / LOGS / f"{member.name}{suffix}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with self._note_sigterm():
            for command in commands:
                code = self._run(command, log)
                if code != 0 and self._signalled:
                    raise MemberFailed(
                        f"{member.name} stopped on SIGTERM after checkpointing; run the same "
                        "eqm sweep again to resume it"
                    )
                if code != 0:
                    raise MemberFailed(f"{member.name}: {last_line(log)} (log: {log})")
        return state

    def _run(self, command: list[str], log: Path) -> int:
        with log.open("ab") as stream:
            stream.write(f"\n$ {' '.join(command)}\n".encode())
            stream.flush()
            self._process = subprocess.Popen(
                command, stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=child_setup(die_with_parent()),
            )
        code = wait_for_exit(self._process)
        self._process.poll()
        return code

    def _stop_child(self) -> None:
        """Send the running command one SIGTERM, unless the task has had one already (the
        trainer checkpoints at its next step boundary and exits)."""
        process = self._process
        if process is not None and not self._signalled and process.returncode is None:
            self._signalled = True
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    @contextlib.contextmanager
    def _note_sigterm(self) -> Iterator[None]:
        """While inside, a SIGTERM to this task is only noted: Slurm signalled the whole
        task, so the training has it already."""

        def noted(signum: int, frame: Any) -> None:
            self._signalled = True

        previous = signal.signal(signal.SIGTERM, noted)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def checkpoint(self) -> Any:
        """submitit's preemption / time-limit hook: stop the training at its next step
        (it checkpoints), wait for it, and return the same member for the requeue."""
        from submitit.helpers import DelayedSubmission

        self._stop_child()
        if self._process is not None:
            wait_for_exit(self._process)
        return DelayedSubmission(MemberJob(self.options, self.member))


def child_setup(then: Callable[[], None] | None) -> Callable[[], None]:
    """The `preexec_fn` of a member's process: ignore `USR2` (it is the job side's signal;
    by default it would kill the training), then `then` (e.g. `die_with_parent`)."""

    def setup() -> None:
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        if then is not None:
            then()

    return setup


def wait_for_exit(process: subprocess.Popen) -> int:
    """Wait for `process` to exit and return its code (negative: killed by that signal)
    without reaping it (`os.waitid(WNOWAIT)`, no lock): safe inside a signal handler that
    interrupted another wait for the same process. The caller reaps it with `poll()`."""
    if process.returncode is not None:
        return process.returncode
    try:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:  # reaped meanwhile by the interrupted wait
        return process.wait()
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
