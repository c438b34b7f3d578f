"""`eqm compare RUN_OR_SWEEP ...`: side-by-side table and the test of each against the first."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from eqmcli.cli.common import console, user_errors
from eqmcli.cli.experiment_tables import (
    compare_legend,
    compare_table,
    describe_comparison,
    group_labels,
)
from eqmcli.experiments.compare import compare


@user_errors
def compare_command(
    paths: list[Path] = typer.Argument(
        ..., metavar="RUN_OR_SWEEP...",
        help="Run directories, checkpoints of runs (RUN/checkpoints/best.pt) and/or sweep folders."
    ),
    metric: str = typer.Option(
        "accuracy", "--metric", help="Metric to test, e.g. accuracy, tar@far=1e-03, "
        "closed_accuracy_few, margin_cv_all, lfw/accuracy."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON only."),
) -> None:
    """Compare runs or sweep configs; each against the first: Welch CI over seeds, or
    McNemar's exact test on per-pair correctness for two single runs.

    Groups are labelled A, B, ... in the table; the lines below it give each one's path
    and the checkpoint its numbers come from."""
    report = compare(paths, metric)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    console.print(compare_table(report))
    for line in compare_legend(report):
        console.print(line, highlight=False, markup=False)
    labels = group_labels(report)
    for comparison in report.comparisons:
        console.print(describe_comparison(comparison, labels), highlight=False, markup=False)
