"""`eqm sweep RECIPE --grid key=v1,v2 ...`: a grid of runs x seeds, then one summary table."""

from __future__ import annotations

import signal
from pathlib import Path

import typer

from eqmcli.cli.common import console, err_console, user_errors
from eqmcli.cli.experiment_tables import sweep_table
from eqmcli.devices import validate_device_string
from eqmcli.grid import parse_grid
from eqmcli.recipe import load_recipe
from eqmcli.rundir import default_run_dir
from eqmcli.sweep import MemberOutcome, SweepOptions, run_sweep

STATUS_STYLE = {"done": "green", "skipped": "cyan", "failed": "red", "interrupted": "yellow"}


def _report(outcome: MemberOutcome) -> None:
    style = STATUS_STYLE.get(outcome.status, "white")
    action = f" ({outcome.action}, {outcome.seconds:.0f} s)" if outcome.action else ""
    if outcome.status == "skipped":
        action = " (finished before)"
    console.print(
        f"[{style}]{outcome.status:>11}[/] {outcome.member.name}{action}"
        + (f": {outcome.message}" if outcome.message else ""),
        highlight=False, soft_wrap=True,
    )


def _started(outcome: MemberOutcome, log: Path) -> None:
    action = outcome.action or "analyze"
    console.print(f"{'running':>11} {outcome.member.name} ({action}; log: {log})",
                  highlight=False, soft_wrap=True)


@user_errors
def sweep_command(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="YAML recipe file."),
    grid: list[str] = typer.Option(
        [], "--grid", help="A swept key and its values, key=v1,v2,... (repeatable: the "
        "Cartesian product); quote a value to keep commas or force a string."
    ),
    seeds: int = typer.Option(1, "--seeds", help="Runs per grid point (seed, seed+1, ...)."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder of the runs (default: runs/sweep-<recipe name>)."
    ),
    jobs: int | None = typer.Option(
        None, "--jobs", help="Runs at once (default: 1 on a CPU, one per GPU)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a recipe key in every run (repeatable)."
    ),
    analyze: bool = typer.Option(
        False, "--analyze", help="Also run 'eqm analyze' (and --split test) on each run."
    ),
    head_classes: int = typer.Option(80, "--head-classes", help="'few' = fewer images (analyze)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Train a grid of recipe overrides x seeds, each a run directory; summarize over seeds.

    Finished runs are skipped and interrupted ones resumed, so a stopped sweep continues
    when the same command runs again. Writes OUT/sweep.json and OUT/logs/<run>.log.
    """
    validate_device_string(device)
    axes = [parse_grid(text) for text in grid]
    folder = out or default_run_dir(f"sweep-{load_recipe(recipe_path, overrides).name}")
    options = SweepOptions(
        recipe=recipe_path, out=folder, axes=axes, seeds=seeds, sets=list(overrides),
        jobs=jobs, device=device, analyze=analyze, head_classes=head_classes,
    )
    result = run_sweep(options, report=_report, started=_started)
    console.print(sweep_table(result))
    console.print(f"wrote {result.json_path}", highlight=False)
    if result.stop_signal is not None:
        finished = sum(o.status in ("done", "skipped") for o in result.outcomes)
        err_console.print(
            f"Interrupted ({result.stop_signal}): {finished} of {len(result.outcomes)} runs "
            "finished; run the same command again to continue.", highlight=False,
        )
        raise typer.Exit(128 + signal.Signals[result.stop_signal].value)
    failed = [o for o in result.outcomes if o.status == "failed"]
    if failed:
        err_console.print(
            f"{len(failed)} run(s) failed; see {options.out / 'logs'}", highlight=False
        )
        raise typer.Exit(1)
