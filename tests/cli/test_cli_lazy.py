"""The `eqm` group loads command modules on demand: `eqm --help` does not import torch."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from eqmcli.cli import COMMANDS
from eqmcli.cli.lazy import load_command

HELP_IN_A_FRESH_PROCESS = """
import sys
from eqmcli.cli import main
sys.argv = ["eqm", "--help"]
try:
    main()
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("eqmcli.cli."))
print("LOADED", " ".join(loaded))
"""


def _paragraph(text: str) -> str:
    """The first paragraph of a help text, on one line."""
    return " ".join(text.strip().split("\n\n")[0].split())


def test_top_level_help_imports_neither_torch_nor_a_command_module() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELP_IN_A_FRESH_PROCESS],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert "Usage: eqm" in done.stdout
    for name in COMMANDS:
        assert name in done.stdout
    loaded = done.stdout.split("LOADED", 1)[1].split()
    assert loaded == ["eqmcli.cli.lazy"], loaded


@pytest.mark.parametrize("name", list(COMMANDS))
def test_registered_summary_is_the_commands_own_first_help_paragraph(name: str) -> None:
    command = load_command(name, COMMANDS[name])
    assert _paragraph(command.help or "") == _paragraph(COMMANDS[name].summary)


@pytest.mark.parametrize(
    ("group", "subcommands"),
    [("data", ["stats", "convert", "make-bin", "align"]), ("bench", ["heads", "train", "all"]),
     ("import", ["insightface"])],
)
def test_subgroup_help_lists_its_subcommands(group: str, subcommands: list[str], eqm) -> None:
    result = eqm(group, "--help")
    assert result.exit_code == 0, result.output
    for name in subcommands:
        assert name in result.output


def test_a_commands_own_help_and_a_subcommands_help_load_their_module(eqm) -> None:
    train = eqm("train", "--help")
    assert train.exit_code == 0, train.output
    assert "--resume" in train.output
    stats = eqm("data", "stats", "--help")
    assert stats.exit_code == 0, stats.output
    assert "--json" in stats.output


def test_a_mistyped_command_is_refused_with_a_suggestion(eqm) -> None:
    result = eqm("trian")
    assert result.exit_code == 2
    assert "Did you mean 'train'" in result.output


def _leaf_commands(name: str, command) -> list[tuple[list[str], object]]:
    """(argv to reach it, click command) for every command under `name`."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [([name], command)]
    return [([name, *argv], leaf) for sub, child in subcommands.items()
            for argv, leaf in _leaf_commands(sub, child)]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_bracketed_words_in_option_help_survive_rich_markup(name: str, eqm) -> None:
    """`[tensorboard]` in an option's help is text, not a rich markup tag to drop."""
    for argv, command in _leaf_commands(name, load_command(name, COMMANDS[name])):
        texts = [param.help or "" for param in command.params if hasattr(param, "help")]
        words = {w for text in texts for w in re.findall(r"\[[a-z][a-z0-9_-]*\]", text)}
        if not words:
            continue
        result = eqm(*argv, "--help", env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        for word in words:
            assert word in result.output, f"eqm {' '.join(argv)} --help lost {word}"
