"""`eqm data ...`: inspect, convert and package data sets."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect, convert and package data sets.", no_args_is_help=True)
