"""`eqm plot RUN [RUN ...]`: the study's figures from the files in run directories."""

from __future__ import annotations

from pathlib import Path

import typer

from eqmcli.cli.common import console, err_console, user_errors
from eqmcli.errors import UserError
from eqmcli.plotting.figures import make_figures
from eqmcli.plotting.sweeps import draw_sweeps, is_sweep


@user_errors
def plot_command(
    runs: list[Path] = typer.Argument(..., help="one or more run directories (compared)"),
    figure: list[str] | None = typer.Option(
        None,
        "--figure",
        "-f",
        help="fig5, fig6, curves, roc or sphere (repeatable); default: all the files allow",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="output folder; default: the first run's figures/"
    ),
    sets: list[str] | None = typer.Option(
        None,
        "--sets",
        help="roc: only these evaluation sets (repeatable or comma-separated, e.g. lfw,ijbb); "
        "default: every set with a drawable ROC",
    ),
    metric: list[str] | None = typer.Option(
        None, "--metric", help="sweep folders: a metric drawn, as in eqm compare (repeatable: "
        "one panel each, e.g. --metric accuracy --metric tar@far=1e-03); default: accuracy"
    ),
    x_key: str | None = typer.Option(
        None, "--x", help="sweep folders: the swept key on the x axis (default: the first)"
    ),
) -> None:
    """Draw Fig. 5/6-style imbalance plots, training curves, ROC and the Fig. 1 sphere; for
    an `eqm sweep` folder, --metric against a swept key (error bars over seeds).

    Several runs are drawn side by side or overlaid, named by their directory names.
    The ROC figure skips sets whose ROC is degenerate (too few mismatched pairs), saying so.
    """
    sweeps = [path for path in runs if is_sweep(path)]  # `eqm sweep` folders
    for name, paths in draw_sweeps(sweeps, metric or ["accuracy"], x_key, out).items():
        console.print(f"{name}: " + ", ".join(map(str, paths)), highlight=False, soft_wrap=True)
    runs = [path for path in runs if path not in sweeps]
    if not runs:
        return
    chosen = [name.strip() for item in sets or [] for name in item.split(",") if name.strip()]
    report = make_figures(runs, figure or None, out, sets=chosen or None)
    for note in report.skipped:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for name, paths in report.written.items():
        console.print(
            f"{name}: " + ", ".join(str(p) for p in paths), highlight=False, soft_wrap=True
        )
    if not report.written:
        raise UserError("no figure could be drawn from these runs' files (see the notes above)")
