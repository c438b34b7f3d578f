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
    from eqmcli.cli import heads

    app.add_typer(heads.app, name="heads")


_register()


def main() -> None:
    """Console-script entry point."""
    app()
