"""`eqm sweep RECIPE --grid key=v1,v2 ...`: a grid of runs x seeds, then one summary table;
`eqm sweep status OUT`: where each member stands."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from eqmcli.cli.common import console, err_console, user_errors
from eqmcli.cli.experiment_tables import sweep_table
from eqmcli.devices import validate_device_string
from eqmcli.errors import UserError
from eqmcli.experiments.grid import parse_grid
from eqmcli.experiments.launchers import (
    LAUNCHERS,
    LauncherConfig,
    SlurmSettings,
    parse_slurm_options,
    read_launcher_config,
)
from eqmcli.experiments.status import MemberStatus, sweep_status
from eqmcli.experiments.sweep import MemberOutcome, SweepOptions, run_sweep
from eqmcli.run.recipe import load_recipe
from eqmcli.run.rundir import default_run_dir

SUMMARY = "Train a grid of recipe overrides x seeds, each a run directory; summarize over seeds."
STATUS_STYLE = {"done": "green", "skipped": "cyan", "failed": "red", "interrupted": "yellow",
                "submitted": "blue", "pending": "blue", "running": "magenta",
                "requeued": "yellow"}


def _report(outcome: MemberOutcome) -> None:
    style = STATUS_STYLE.get(outcome.status, "white")
    action = f" ({outcome.action}, {outcome.seconds:.0f} s)" if outcome.action else ""
    if outcome.status == "skipped":
        action = " (finished before)"
    elif outcome.job_id:  # Slurm: the job, not a time
        action = f" ({outcome.action + '; ' if outcome.action else ''}job {outcome.job_id})"
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
    launcher: str | None = typer.Option(
        None, "--launcher", help="local (default: processes here) or slurm (one job array "
        "through submitit, pip install 'eqmcli\\[cluster]')."
    ),
    launcher_config: Path | None = typer.Option(
        None, "--launcher-config", help="YAML file of launcher settings (launcher, partition, "
        "gpus_per_job, ..., slurm_options); the options here override it."
    ),
    partition: str | None = typer.Option(None, "--partition", help="Slurm partition."),
    gpus_per_job: int | None = typer.Option(
        None, "--gpus-per-job", help="GPUs per member (G > 1: data-parallel, as torchrun)."
    ),
    cpus_per_job: int | None = typer.Option(None, "--cpus-per-job", help="CPUs per member."),
    mem: str | None = typer.Option(None, "--mem", help="Memory per node, e.g. 64G."),
    time_limit: str | None = typer.Option(
        None, "--time", help="Time limit per member, e.g. 04:00:00 (default 24:00:00)."
    ),
    array_parallelism: int | None = typer.Option(
        None, "--array-parallelism", help="Members running at once (the array's %K)."
    ),
    nodes: int | None = typer.Option(None, "--nodes", help="Nodes per member (torchrun)."),
    slurm_options: list[str] = typer.Option(
        [], "--slurm-option", help="Any other submitit Slurm parameter, key=value "
        "(account, qos, constraint, ...; repeatable)."
    ),
) -> None:
    """Train a grid of recipe overrides x seeds, each a run directory; summarize over seeds.

    Finished runs are skipped and interrupted ones resumed, so a stopped sweep continues
    when the same command runs again. Writes OUT/sweep.json and OUT/logs/<run>.log.
    With --launcher slurm the members are submitted as one job array and the command
    returns; 'eqm sweep status OUT' follows them.
    """
    validate_device_string(device)
    config = read_launcher_config(launcher_config) if launcher_config else LauncherConfig()
    given = {"partition": partition, "gpus_per_job": gpus_per_job,
             "cpus_per_job": cpus_per_job, "mem": mem, "time": time_limit,
             "array_parallelism": array_parallelism, "nodes": nodes}
    chosen = launcher or config.launcher
    if chosen not in LAUNCHERS:
        raise UserError(f"--launcher {chosen!r} is not one of {', '.join(LAUNCHERS)}")
    slurm = _slurm_settings(config, given, parse_slurm_options(slurm_options))
    used = sorted(f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None)
    if chosen == "local" and (used or slurm_options):
        named = ", ".join(used + ["--slurm-option"] * bool(slurm_options))
        raise UserError(f"{named}: Slurm settings, used only with --launcher slurm")
    axes = [parse_grid(text) for text in grid]
    folder = out or default_run_dir(f"sweep-{load_recipe(recipe_path, overrides).name}")
    options = SweepOptions(
        recipe=recipe_path, out=folder, axes=axes, seeds=seeds, sets=list(overrides),
        jobs=jobs, device=device, analyze=analyze, head_classes=head_classes,
        launcher=chosen, slurm=slurm if chosen == "slurm" else None,
    )
    result = run_sweep(options, report=_report, started=_started)
    if chosen == "local" or any(config.runs for config in result.configs):
        console.print(sweep_table(result))
    console.print(f"wrote {result.json_path}", highlight=False)
    if chosen == "slurm":
        jobs_sent = sorted({o.job_id.split("_")[0] for o in result.outcomes
                            if o.status == "submitted" and o.job_id})
        sent = sum(o.status == "submitted" for o in result.outcomes)
        what = f"submitted {sent} member(s) (Slurm job {', '.join(jobs_sent)})" if sent else (
            "nothing to submit (every member is done or alive in Slurm)")
        console.print(f"{what}; follow them with: eqm sweep status {folder}", highlight=False)
        return
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


def _slurm_settings(config: LauncherConfig, given: dict[str, Any],
                    options: dict[str, str]) -> SlurmSettings:
    """The config file's settings with the command line's on top (one sentence if bad)."""
    values = config.model_dump(exclude={"launcher"})
    values.update({k: v for k, v in given.items() if v is not None})
    values["slurm_options"] = {**values["slurm_options"], **options}
    try:
        return SlurmSettings.model_validate(values)
    except ValueError as error:
        first = error.errors()[0] if hasattr(error, "errors") else {"loc": (), "msg": str(error)}
        key = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-")
        message = str(first["msg"]).removeprefix("Value error, ")
        raise UserError(message if message.startswith("--") else f"{key}: {message}") from None


def status_table(out: Path, rows: list[MemberStatus]) -> Table:
    """One row per member: state, job id, epoch/step, last verification accuracy, log."""
    table = Table(title=f"sweep {out}: {len(rows)} members", box=box.SIMPLE_HEAD,
                  caption="verification: the last accuracy in the run's metrics.jsonl")
    for column in ("member", "state", "job", "epoch", "step", "verif. acc %", "log"):
        table.add_column(column, justify="right" if column in ("epoch", "step") else "left",
                         overflow="fold")
    for row in rows:
        style = STATUS_STYLE.get(row.state, "white")
        epoch = "-" if row.epoch is None else f"{row.epoch:g}"
        verification = "-" if row.verification is None else f"{100 * row.verification:.2f}"
        table.add_row(escape(row.name), f"[{style}]{row.state}[/]", row.job_id or "-", epoch,
                      "-" if row.step is None else str(row.step), verification,
                      escape(row.log))
    return table


@user_errors
def status_command(
    out: Path = typer.Argument(..., metavar="OUT", help="The --out folder of an eqm sweep."),
) -> None:
    """Where each member of a sweep stands: state, Slurm job, epoch/step, last verification."""
    rows = sweep_status(out)
    console.print(status_table(out, rows))
    for row in rows:
        if row.message:
            err_console.print(f"{row.name}: {row.message}", highlight=False, soft_wrap=True,
                              markup=False)


class SweepGroup(TyperGroup):
    """`eqm sweep RECIPE ...` runs a sweep (the `run` command); `eqm sweep status OUT`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=SweepGroup, no_args_is_help=True, add_completion=False,
    help=f"{SUMMARY}\n\n'eqm sweep RECIPE --grid ...' is 'eqm sweep run RECIPE --grid ...'; "
    "'eqm sweep status OUT' shows where each member of a sweep stands.",
)
app.command("run")(sweep_command)
app.command("status")(status_command)
