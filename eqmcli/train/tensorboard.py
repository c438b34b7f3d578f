"""TensorBoard scalars in `RUN/tb/`: a second writer of the records `metrics.jsonl` gets.

`metrics.jsonl` stays the source of truth; `TensorBoardSink` receives each record from
`MetricsLog.write` (the one place records are emitted) and turns it into scalars at the
record's global step, so nothing is computed twice:

    step records   train/loss, train/lr, train/img_per_s, head/<statistic> (EqM's case
                   fractions, hard/inter fractions, loss above floor, ...)
    epoch records  epoch/loss, epoch/seconds
    eval records   eval/<benchmark>/accuracy, .../threshold (cosine), .../auc, .../eer,
                   .../tar_at_far_<far>: the values the data supports (None is skipped)

Accuracies, TAR and EER are fractions in [0, 1], as in `metrics.jsonl`. TensorBoard keeps
scalars as float32. `tensorboard` is the optional `[tensorboard]` extra.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eqmcli.atomic import check_writable_folder
from eqmcli.errors import UserError
from eqmcli.run.recipe import Recipe
from eqmcli.run.rundir import RunPaths
from eqmcli.train.run_state import MetricsSink

TB_DIR = "tb"
INSTALL_HINT = (
    'pip install "eqmcli[tensorboard]" (or pip install -e ".[tensorboard]" in a checkout)'
)
#: step-record fields shown under train/; every other number in a step record is the head's
TRAIN_FIELDS = ("loss", "lr", "img_per_s")
#: eval-record fields written as scalars (the TAR@FAR points are added from `tar_at_far`)
EVAL_FIELDS = ("accuracy", "accuracy_std", "threshold", "auc", "eer", "eer_threshold",
               "accuracy_noflip")
#: record fields that place a record, never plotted themselves
POSITION_FIELDS = ("kind", "epoch", "step")


def summary_writer_class() -> Any:
    """`torch.utils.tensorboard.SummaryWriter`, or a `UserError` saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            f"train.tensorboard needs the optional [tensorboard] extra: {INSTALL_HINT}"
        ) from None
    return SummaryWriter


def check_tensorboard(recipe: Recipe) -> None:
    """Refuse a recipe with `train.tensorboard: true` when the extra is missing (call it
    before anything is created)."""
    if recipe.train.tensorboard:
        summary_writer_class()


def tensorboard_dir(paths: RunPaths) -> Path:
    """`RUN/tb/`, the folder `tensorboard --logdir` is pointed at."""
    return paths.root / TB_DIR


class TensorBoardSink:
    """Writes the scalars of each `metrics.jsonl` record to event files in `log_dir`.

    `resumed_from` (the checkpoint's step on a resume): events of a later step written by
    the interrupted process are hidden by TensorBoard (its purge at `resumed_from`), so
    replayed steps are not shown twice; the records up to that step stay, as in
    `metrics.jsonl`.
    """

    def __init__(self, log_dir: Path, resumed_from: int | None = None) -> None:
        writer_class = summary_writer_class()
        purge_step = None if resumed_from is None else resumed_from + 1
        self.log_dir = log_dir
        if log_dir.exists() and not log_dir.is_dir():
            raise UserError(
                f"{log_dir} is a file, not a folder, so TensorBoard events cannot go there; "
                "move it away or turn train.tensorboard off"
            )
        # before the writer's own thread meets a read-only folder (and prints its traceback)
        check_writable_folder(log_dir, "the TensorBoard folder", "; turn train.tensorboard off "
                              "to go on (metrics.jsonl and the checkpoints are unaffected)")
        with self._failures_said():
            self.writer = writer_class(log_dir=str(log_dir), purge_step=purge_step)

    @contextlib.contextmanager
    def _failures_said(self) -> Iterator[None]:
        """A failed write of the event file (read-only folder, full disk) as one sentence."""
        try:
            yield
        except OSError as error:
            reason = error.strerror or str(error)
            raise UserError(
                f"cannot write TensorBoard events in {self.log_dir}: {reason}; metrics.jsonl "
                "and the checkpoints are unaffected (turn train.tensorboard off to go on)"
            ) from None

    def write(self, record: dict[str, Any]) -> None:
        """Add the record's scalars at its global step; flush at the end of each epoch."""
        step = record.get("step")
        if not isinstance(step, int):
            return
        with self._failures_said():
            for tag, value in record_scalars(record).items():
                self.writer.add_scalar(tag, value, global_step=step)
            if record.get("kind") == "epoch":
                self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        with self._failures_said():
            self.writer.close()


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard tags and values of one `metrics.jsonl` record (see the module doc);
    no scalars for other kinds (e.g. "resume") or for missing/non-finite values."""
    kind = record.get("kind")
    if kind == "step":
        scalars = {
            (f"train/{key}" if key in TRAIN_FIELDS else f"head/{key}"): value
            for key, value in record.items() if key not in POSITION_FIELDS
        }
    elif kind == "epoch":
        scalars = {f"epoch/{key}": value for key, value in record.items()
                   if key not in POSITION_FIELDS}
    elif kind == "eval":
        prefix = f"eval/{record.get('benchmark', 'unnamed')}"
        scalars = {f"{prefix}/{key}": record.get(key) for key in EVAL_FIELDS}
        tar = record.get("tar_at_far") or {}
        scalars.update({f"{prefix}/tar_at_far_{far}": value for far, value in tar.items()})
    else:
        return {}
    return {tag: float(value) for tag, value in scalars.items() if is_number(value)}


def is_number(value: Any) -> bool:
    """A finite int or float (bools, None, strings and lists are not plotted)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def tensorboard_sinks(
    recipe: Recipe, paths: RunPaths, *, main: bool, resumed_from: int | None
) -> list[MetricsSink]:
    """The metrics sinks of a run: a `TensorBoardSink` on rank 0 when `train.tensorboard`."""
    if not (main and recipe.train.tensorboard):
        return []
    return [TensorBoardSink(tensorboard_dir(paths), resumed_from=resumed_from)]
