"""`eqm plot RUN [RUN ...]`: the study's figures from the files in run directories."""

from __future__ import annotations

from pathlib import Path

import typer

from eqmcli.cli.common import console, err_console, user_errors


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
) -> None:
    """Draw Fig. 5/6-style imbalance plots, training curves, ROC and the Fig. 1 sphere.

    Several runs are drawn side by side or overlaid, named by their directory names.
    The ROC figure skips sets whose ROC is degenerate (too few mismatched pairs), saying so.
    """
    from eqmcli.errors import UserError
    from eqmcli.plots import make_figures

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
