"""What a run shows on the console: the rich progress bar, one-line notes, and plain log
lines where no bar can be drawn (a batch job's log file, `--no-progress`)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: `last_stats` keys shown on the bar, with their labels and formats: EqM's fraction of hard
#: samples and its mean number of other classes above t2 per sample (the fraction of
#: samples with any such class is 1.00 whenever classes outnumber what t2 lets apart)
BAR_STATS = (("hard_fraction", "hard", ".2f"), ("mean_inter_violations", "over-t2", ".1f"))


def say(console: Any, text: str) -> None:
    """Print one note (no markup, never wrapped mid-word) when there is a console."""
    if console is not None:
        console.print(text, highlight=False, soft_wrap=True)


def stats_fields(stats: dict[str, float]) -> str:
    """`hard 0.42  over-t2 3.1` from a head's `last_stats` (empty for other heads)."""
    return "  ".join(f"{label} {stats[key]:{spec}}" for key, label, spec in BAR_STATS
                     if key in stats)


def training_progress(console: Any, *, enabled: bool) -> Progress:
    """The progress bar of a run: epoch, steps, loss, lr, img/s, EqM fractions, ETA."""
    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} img/s"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


class LogLines:
    """A `metrics.jsonl` sink that prints each record as one plain line.

    For consoles that cannot show a live bar (output redirected to a file, as under Slurm,
    or `--no-progress`): every logged step, epoch and verification becomes a line such as

        epoch 3/30  step 120/330  loss 2.085  lr 4.31e-02  530 img/s  hard 1.00 ... ETA 0:00:32

    The ETA extrapolates the wall time per step since this sink was opened (evaluation
    time included).
    """

    def __init__(self, console: Any, *, epochs: int, total_steps: int, start_step: int) -> None:
        self.console = console
        self.epochs, self.total_steps, self.start_step = epochs, total_steps, start_step
        self.opened = time.perf_counter()

    def write(self, record: dict[str, Any]) -> None:
        """Print the line of a "step", "epoch" or "eval" record (other kinds: nothing)."""
        kind = record.get("kind")
        if kind == "step":
            say(self.console, self.step_line(record))
        elif kind == "epoch":
            say(self.console, f"epoch {record['epoch']}/{self.epochs} done: mean loss "
                              f"{record['loss']:.3f}, {record['seconds']:.1f} s")
        elif kind == "eval":
            say(self.console, eval_line(record))

    def step_line(self, record: dict[str, Any]) -> str:
        """`epoch e/E  step s/S  loss  lr  img/s  EqM fractions  ETA`."""
        step = record["step"]
        done = step - self.start_step
        elapsed = time.perf_counter() - self.opened
        eta = elapsed / done * (self.total_steps - step) if done > 0 else None
        parts = [
            f"epoch {record['epoch']}/{self.epochs}",
            f"step {step}/{self.total_steps}",
            f"loss {record['loss']:.3f}",
            f"lr {record['lr']:.2e}",
            f"{record['img_per_s']:,.0f} img/s",
            stats_fields(record),
            f"ETA {timedelta(seconds=round(eta))}" if eta is not None else "",
        ]
        return "  ".join(part for part in parts if part)

    def close(self) -> None:
        """Nothing to release."""


def eval_line(record: dict[str, Any]) -> str:
    """`epoch 3 verification on synthetic: 93.27% ± 0.81, threshold 0.508 (cos)`; within an
    epoch (`eval.every_steps`) it starts `step 150 (epoch 2.5) verification`."""
    epoch = record["epoch"]
    within = f"step {record['step']} (epoch {epoch:g})"
    where = f"epoch {epoch}" if isinstance(epoch, int) else within
    head = f"{where} verification on {record['benchmark']}"
    if record.get("accuracy") is None:
        return f"{head}: accuracy not available (the pairs have one class)"
    return (f"{head}: {100 * record['accuracy']:.2f}% ± {100 * record['accuracy_std']:.2f}, "
            f"threshold {record['threshold']:.3f} (cos)")


def log_line_sinks(
    console: Any, *, progress: bool, main: bool, epochs: int, total_steps: int, start_step: int
) -> list[LogLines]:
    """A `LogLines` sink on rank 0 when there is a console but no live bar on it."""
    if console is None or not main or (progress and console.is_terminal):
        return []
    return [LogLines(console, epochs=epochs, total_steps=total_steps, start_step=start_step)]
