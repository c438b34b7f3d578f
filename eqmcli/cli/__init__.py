"""The `eqm` Typer application: each command parses, calls one core function, renders."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="eqm",
    help="Deep face recognition experiments with the Equalized Margin (EqM) loss.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach the command modules (imported lazily so `eqm --help` stays fast)."""
    from eqmcli.cli import data, train

    app.command("train")(train.train_command)
    app.add_typer(data.app, name="data")
    from eqmcli.cli import bench

    app.add_typer(bench.app, name="bench")
    from eqmcli.cli import eval as eval_cmd

    app.command("eval")(eval_cmd.eval_command)
    from eqmcli.cli import analyze, plot

    app.command("analyze")(analyze.analyze_command)
    app.command("plot")(plot.plot_command)
    from eqmcli.cli import embed, models

    app.command("embed")(embed.embed_command)
    app.command("export")(models.export_command)
    app.add_typer(models.import_app, name="import")
    from eqmcli.cli import compare, sweep

    app.command("sweep")(sweep.sweep_command)
    app.command("compare")(compare.compare_command)


_register()


def main() -> None:
    """Console-script entry point."""
    app()
