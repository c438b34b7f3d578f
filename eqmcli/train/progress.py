"""What a run shows on the console: the rich progress bar and one-line notes."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: `last_stats` keys shown on the bar, with their labels (EqM's case fractions)
BAR_STATS = (("hard_fraction", "hard"), ("inter_violation_fraction", "inter"))


def say(console: Any, text: str) -> None:
    """Print one note (no markup, never wrapped mid-word) when there is a console."""
    if console is not None:
        console.print(text, highlight=False, soft_wrap=True)


def stats_fields(stats: dict[str, float]) -> str:
    """`hard 0.42  inter 0.10` from a head's `last_stats` (empty for other heads)."""
    return "  ".join(f"{label} {stats[key]:.2f}" for key, label in BAR_STATS if key in stats)


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
