"""The run directory while a run owns it: preparation, the OS lock, resume checks, metrics.

- `prepare_run_dir` checks the output path before creating anything, takes the run's
  exclusive lock (`RunLock`, an OS `flock` that dies with the process) and then decides:
  a new run needs an empty folder, `--resume` needs `checkpoints/last.pt`, `--force`
  empties a folder only when it is recognisably a run directory
  (`RunPaths.is_run_directory`).
- `resume_changes` compares the recipe a run was started with and the one given now: the
  sections that define the experiment are frozen, everything else is applied from the
  resumed step on and recorded (a `"resume"` record in `metrics.jsonl`).
- `MetricsLog` appends one JSON object per line; on resume it drops the records after
  the checkpoint's step and a line cut off by a crash.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from eqmcli.atomic import atomic_write_text, stale_temporaries
from eqmcli.errors import UserError, shown
from eqmcli.run.recipe import Recipe
from eqmcli.run.rundir import LOCK, MARKER, NAME_MAX, RunPaths, metrics_record

#: Recipe keys (dotted prefixes) that define the experiment: a resume may not change them.
FROZEN_ON_RESUME = ("data.train", "model", "loss", "seed", "optim.name")
#: Keys that never matter for a resume (the recipe's name only names the default folder).
IGNORED_ON_RESUME = ("name",)
PATH_MAX = 4096


class RunLock:
    """An exclusive `flock` on `RUN/.eqm-lock`, held for the life of the run.

    The kernel releases it when the process ends, however it ends (kill -9 included), so a
    lock is never stale; the file keeps the holder's PID and host for the message.
    """

    def __init__(self, path: Path, what: str = "run directory") -> None:
        self.path = path
        self.what = what  # the folder's kind, for the message
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `UserError` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{self.what} {self.path.parent} is in use by another eqm process "
                f"({shown(holder, 80)[1:-1]}); wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclass
class PreparedRun:
    """A run directory this process owns: its paths, its held lock, what was cleaned."""

    paths: RunPaths
    lock: RunLock
    removed: list[str] = field(default_factory=list)  # entries --force deleted
    cleaned: list[str] = field(default_factory=list)  # stale temporary files deleted
    created: Path | None = None  # the outermost folder this preparation created

    def discard_if_untouched(self) -> None:
        """Release the lock; then, when this preparation created the run directory and it
        still holds only the lock and the marker (the run was refused before writing
        anything), remove it and the empty parent folders it created."""
        self.lock.release()
        root = Path(os.path.abspath(self.paths.root))  # compared with `created`, absolute
        if self.created is None or not root.is_dir():
            return
        if any(entry.name not in (LOCK, MARKER) for entry in root.iterdir()):
            return
        for name in (LOCK, MARKER):
            (root / name).unlink(missing_ok=True)
        for folder in (root, *root.parents):
            try:
                folder.rmdir()
            except OSError:
                return
            if folder == self.created:
                return


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_path(out_dir: Path, data_roots: Sequence[Path] = ()) -> None:
    """Refuse, before anything is created, an output path that cannot or must not be used.

    Too-long names, a file where a folder is needed, and a folder inside the training data
    (`data_roots`) are each one sentence.
    """
    absolute = Path(os.path.abspath(out_dir))
    if any(len(part.encode()) > NAME_MAX for part in absolute.parts) or (
        len(str(absolute).encode()) >= PATH_MAX
    ):
        raise UserError(
            f"the run directory path {shown(str(out_dir), 80)} is too long for the file "
            f"system (at most {NAME_MAX} bytes per name, {PATH_MAX} in all)"
        )
    resolved = absolute.resolve()
    for root in data_roots:
        if _inside(resolved, Path(root).resolve()):
            raise UserError(
                f"run directory {out_dir} lies inside the training data {root}; choose an "
                "--out outside it, so no run file is ever mistaken for data"
            )
    existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == resolved else f" ({existing} is a file)"
        raise UserError(f"run directory {out_dir} cannot be created: a file is in the way{where}")


def prepare_run_dir(
    out_dir: Path, *, resume: bool, force: bool, data_roots: Sequence[Path] = (),
    inputs: Sequence[tuple[str, Path]] = (),
) -> PreparedRun:
    """Check, create and lock `out_dir` for a new run, a resume or a forced restart.

    Returns the held lock (the caller releases it when the run ends, or calls
    `PreparedRun.discard_if_untouched` when it fails). A user mistake or a busy directory
    raises `UserError` and leaves no folder behind that this call created; nothing is
    deleted unless `force` and the folder is recognisably a run directory that holds none
    of `inputs` (recipe key, path it reads).
    """
    if resume and force:
        raise UserError("--resume and --force contradict each other; pass only one")
    check_output_path(out_dir, data_roots)
    paths = RunPaths(out_dir)
    absolute = Path(os.path.abspath(out_dir))
    missing = [folder for folder in (absolute, *absolute.parents) if not folder.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(paths.lock)
        lock.acquire()
    except OSError as error:
        raise UserError(f"cannot use run directory {out_dir}: {error.strerror}") from None
    prepared = PreparedRun(paths, lock, created=missing[-1] if missing else None)
    try:
        prepared.removed = _claim(paths, resume=resume, force=force, inputs=inputs)
        for folder in (paths.root, paths.checkpoints):
            for stale in stale_temporaries(folder):
                stale.unlink()
                prepared.cleaned.append(stale.name)
        paths.mark("eqm train")
    except OSError as error:
        prepared.discard_if_untouched()
        raise UserError(f"cannot use run directory {out_dir}: {error.strerror}") from None
    except BaseException:
        prepared.discard_if_untouched()
        raise
    return prepared


def _claim(
    paths: RunPaths, *, resume: bool, force: bool, inputs: Sequence[tuple[str, Path]]
) -> list[str]:
    """Check what `paths.root` holds against the mode; with `force`, empty it unless it
    holds the working folder or one of `inputs`. Returns what was removed."""
    entries = sorted(e for e in paths.root.iterdir() if e.name not in (LOCK, MARKER))
    unfinished = paths.is_run_directory() and not paths.last.is_file()
    if resume:
        if unfinished:
            raise UserError(
                f"cannot resume {paths.root}: the run stopped before its first checkpoint "
                f"({paths.last} does not exist); pass --force instead of --resume to start "
                "it over"
            )
        if not paths.last.is_file():
            raise UserError(f"cannot resume: {paths.last} does not exist")
        return []
    if not entries:
        return []
    if not force:
        if unfinished:
            raise UserError(
                f"run directory {paths.root} holds a run that stopped before its first "
                "checkpoint (nothing to resume); pass --force to start it over"
            )
        raise UserError(
            f"run directory {paths.root} is not empty; pass --resume to continue it "
            "or --force to start over"
        )
    if not paths.is_run_directory():
        raise UserError(
            f"--force refused: {paths.root} does not look like an eqm run directory (no "
            f"{MARKER} marker with recipe.yaml); delete it yourself or choose another --out"
        )
    root = paths.root.resolve()
    if _inside(Path.cwd().resolve(), root):
        raise UserError(f"--force refused: {paths.root} contains {Path.cwd()}, which would be lost")
    for key, inner in inputs:
        if _inside(Path(inner).resolve(), root):
            raise UserError(
                f"--force refused: {paths.root} holds {inner} ({key}), which this run reads; "
                "choose another --out"
            )
    removed = []
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            removed.append(entry.name + "/")
        else:
            entry.unlink()
            removed.append(entry.name)
    return removed


# ---------------------------------------------------------------------------- resume
@dataclass(frozen=True)
class Change:
    """A recipe key whose value differs between the checkpoint and the resumed run."""

    key: str
    before: Any
    after: Any

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "before": self.before, "after": self.after}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _matches(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def recipe_changes(stored: Recipe, given: Recipe) -> list[Change]:
    """Every resolved recipe key (paths made absolute) whose value differs, sorted by key;
    `IGNORED_ON_RESUME` keys excepted."""
    before = _flatten(with_absolute_paths(stored).model_dump(mode="json"))
    after = _flatten(with_absolute_paths(given).model_dump(mode="json"))
    return [
        Change(key, before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key) and not _matches(key, IGNORED_ON_RESUME)
    ]


def resume_changes(stored: Recipe, given: Recipe, source: str) -> list[Change]:
    """The settings changed since the run started, or `UserError` if a frozen one changed.

    Frozen: `FROZEN_ON_RESUME` (the data, model, loss, seed and optimizer type). Every
    other change (learning rate, schedule, batch size, workers, logging, device, ...) is
    allowed; the trainer applies it from the resumed step on and records it.
    """
    changes = recipe_changes(stored, given)
    frozen = [c for c in changes if _matches(c.key, FROZEN_ON_RESUME)]
    if frozen:
        named = ", ".join(
            f"{c.key} ({shown(c.before, 30)} -> {shown(c.after, 30)})" for c in frozen[:3]
        )
        more = f" and {len(frozen) - 3} more" if len(frozen) > 3 else ""
        raise UserError(
            f"cannot resume {source}: {named}{more} changed since the run started; the data, "
            "model, loss, seed and optimizer type are fixed for a run (start a new run "
            "with another --out instead)"
        )
    return changes


def with_absolute_paths(recipe: Recipe) -> Recipe:
    """`recipe` with `data.train.root` and `eval.data_root` made absolute (from the cwd).

    Recorded this way, a run's recipe finds its data from any working directory.
    """
    data, evaluation = recipe.data, recipe.eval
    root = data.train.data_folder
    if root is not None:
        train = data.train.model_copy(update={"root": Path(os.path.abspath(root))})
        data = data.model_copy(update={"train": train})
    if evaluation.data_root is not None:
        evaluation = evaluation.model_copy(
            update={"data_root": Path(os.path.abspath(evaluation.data_root))}
        )
    return recipe.model_copy(update={"data": data, "eval": evaluation})


def describe_changes(changes: Sequence[Change]) -> str:
    """`optim.lr 0.1 -> 0.01, ...` (values bounded) for the console."""
    return ", ".join(f"{c.key} {shown(c.before, 30)} -> {shown(c.after, 30)}" for c in changes)


def resume_command(recipe_path: Path | str, out_dir: Path | str, overrides: Sequence[str]) -> str:
    """The shell command that resumes a run, with every `--set` override, quoted for sh."""
    words = ["eqm", "train", str(recipe_path), "--out", str(out_dir), "--resume"]
    for override in overrides:
        words += ["--set", override]
    return shlex.join(words)


def rescale_resumed_step(
    state: dict[str, Any], num_samples: int, global_batch: int, steps_per_epoch: int
) -> int:
    """The step to resume at when the global batch (ranks × batch) changed since the save.

    Keeps the completed epochs and the samples consumed in the current one; returns
    `state["step"]` unchanged when the global batch is the same.
    """
    step = int(state["step"])
    saved_batch = int(state.get("global_batch", global_batch))
    if saved_batch == global_batch:
        return step
    saved_per_epoch = max(num_samples // saved_batch, 1)
    epochs, within = divmod(step, saved_per_epoch)
    return epochs * steps_per_epoch + min(within * saved_batch // global_batch, steps_per_epoch)


# --------------------------------------------------------------------------- metrics
class MetricsSink(Protocol):
    """A second writer of the records `metrics.jsonl` gets (e.g. TensorBoard scalars)."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MetricsLog:
    """Append-only `metrics.jsonl` (one JSON object per line); `path=None` writes nothing.

    With `keep_until_step` (a resume), records after that step are dropped, and so is a
    line that is not JSON (cut off by a crash or a full disk); `notes` says what was dropped.
    Each record also goes to every one of `sinks` (closed by `close`).
    """

    def __init__(
        self, path: Path | None, keep_until_step: int | None = None,
        sinks: Sequence[MetricsSink] = (),
    ) -> None:
        self.path = path
        self.sinks = list(sinks)
        self.notes: list[str] = []
        if path is not None and keep_until_step is not None and path.is_file():
            self._keep_until(path, keep_until_step)

    def _keep_until(self, path: Path, step: int) -> None:
        kept: list[str] = []
        broken = 0
        for raw in path.read_bytes().splitlines():
            if not raw.strip():
                continue
            record = metrics_record(raw)
            if record is None:
                broken += 1
            elif not isinstance(record.get("step", 0), int) or record.get("step", 0) <= step:
                kept.append(raw.decode("utf-8"))
        if broken:
            self.notes.append(
                f"{path}: dropped {broken} unreadable line(s) (cut off by an earlier crash)"
            )
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` as one line, then hand it to the sinks."""
        if self.path is not None:
            with self.path.open("a") as stream:
                stream.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        """Close the sinks (the JSON lines need no closing)."""
        for sink in self.sinks:
            sink.close()
