"""A Typer group that imports a command's module only when that command runs.

The command modules import the torch-based core at their top (so a reader sees each file's
dependencies); the top-level group keeps `eqm --help` fast by listing the commands from
their registered one-line summaries and importing a module only to run (or show the help
of) its own command.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives and what `eqm --help` says about it.

    `attribute` names a command function (``train_command``) or a Typer sub-application
    (``app``: a group such as ``eqm data``); `summary` is the first paragraph of the
    command's own help, shown in the command list (a test keeps the two equal)."""

    module: str
    attribute: str
    summary: str


@functools.cache
def load_command(name: str, entry: LazyCommand) -> TyperCommand | TyperGroup:
    """Import `entry`'s module and build its click command (once per process)."""
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
        return typer.main.get_group(holder).commands[name]  # type: ignore[return-value]
    holder.command(name)(target)
    return typer.main.get_command(holder)  # type: ignore[return-value]


class LazyCommandGroup(TyperGroup):
    """The top-level `eqm` group: commands come from `registry`, imported on demand.

    Subclasses set `registry` (command name -> `LazyCommand`, in the order shown)."""

    registry: dict[str, LazyCommand] = {}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _RegisteredCommands(self.registry)
        self._summarising = False

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(self.registry)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | TyperGroup | None:
        entry = self.registry.get(cmd_name)
        if entry is not None and self._summarising:  # `eqm --help`'s list: no import needed
            return TyperCommand(cmd_name, help=entry.summary)
        return self.commands.get(cmd_name)

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        self._summarising = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._summarising = False


class _RegisteredCommands(Mapping):
    """`TyperGroup.commands` as a view of the registry: the names are known up front (Typer's
    "did you mean" suggestions read them), a command is imported when it is looked up."""

    def __init__(self, registry: dict[str, LazyCommand]) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> TyperCommand | TyperGroup:
        return load_command(name, self._registry[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry)

    def __len__(self) -> int:
        return len(self._registry)
