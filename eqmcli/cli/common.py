"""Shared CLI plumbing: consoles and the user-error -> exit 2 wrapper."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from eqmcli.errors import UserError, shown

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> typer.Exit:
    """Print one error sentence to stderr and return the exit-2 exception to raise.

    The sentence is printed as plain text: brackets in it (``eqmcli[onnx]``, a path such as
    ``runs/[a]``) are not rich markup."""
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def user_errors(func: F) -> F:
    """Decorator: a `UserError` (or missing file) becomes one sentence and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            raise fail(str(exc)) from None
        except FileNotFoundError as exc:
            raise fail(f"file not found: {exc.filename or exc}") from None

    return wrapper  # type: ignore[return-value]


def comma_separated_ints(text: str, option: str) -> list[int]:
    """``"10,100"`` -> [10, 100] for an option taking a comma-separated list (blank parts
    skipped); anything but integers is a `UserError` naming ``option``. The core checks the
    values' range."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(
            f"{option} takes comma-separated integers (e.g. 10,100), got {shown(text)}"
        ) from None


# An ONNX model's preprocessing (`eqm eval`, `eqm embed`; eqmcli.interop.onnx.resolve_preprocessing)
Mean = Annotated[
    str | None,
    typer.Option("--mean", help="ONNX model: per-channel mean of (x/255 - mean)/std, one "
                 "value or three in the model's channel order (default: its metadata, else 0.5)."),
]
Std = Annotated[
    str | None,
    typer.Option("--std", help="ONNX model: per-channel std of (x/255 - mean)/std "
                 "(default: its metadata, else 0.5)."),
]
Bgr = Annotated[
    bool | None,
    typer.Option("--bgr/--rgb", help="ONNX model: channel order it expects "
                 "(default: its metadata, else RGB)."),
]
