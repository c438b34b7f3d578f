"""The `eqm` Typer application: each command parses, calls one core function, renders.

The command modules are imported only when their command runs (or shows its own help), so
`eqm --help` does not import torch; `COMMANDS` holds each command's place and summary."""

from __future__ import annotations

import typer

from eqmcli.cli.lazy import LazyCommand, LazyCommandGroup

COMMANDS = {
    "train": LazyCommand(
        "eqmcli.cli.train", "train_command",
        "Train a face-embedding network from a YAML recipe.",
    ),
    "eval": LazyCommand(
        "eqmcli.cli.eval", "eval_command",
        "Evaluate a trained model: 10-fold verification, IJB-B/C, YouTube Faces, MegaFace.",
    ),
    "analyze": LazyCommand(
        "eqmcli.cli.analyze", "analyze_command",
        "Per-class intra-class scope, inter-class margin and accuracy vs class size.",
    ),
    "plot": LazyCommand(
        "eqmcli.cli.plot", "plot_command",
        "Draw Fig. 5/6-style imbalance plots, training curves, ROC and the Fig. 1 sphere; for "
        "an `eqm sweep` folder, --metric against a swept key (error bars over seeds).",
    ),
    "embed": LazyCommand(
        "eqmcli.cli.embed", "embed_command",
        "Embed images: one row per image in FEATURES.npy (L2-normalized unless --raw).",
    ),
    "export": LazyCommand(
        "eqmcli.cli.models", "export_command",
        "Export a run's backbone: ONNX (verified with onnxruntime) and/or arcface_torch weights.",
    ),
    "sweep": LazyCommand(
        "eqmcli.cli.sweep", "app",
        "Train a grid of recipe overrides x seeds, each a run directory; summarize over seeds.",
    ),
    "compare": LazyCommand(
        "eqmcli.cli.compare", "compare_command",
        "Compare runs or sweep configs; each against the first: Welch CI over seeds, or "
        "McNemar's exact test on per-pair correctness for two single runs.",
    ),
    "data": LazyCommand("eqmcli.cli.data", "app", "Inspect, convert and package data sets."),
    "bench": LazyCommand("eqmcli.cli.bench", "app", "Micro-benchmarks: time the building blocks."),
    "import": LazyCommand(
        "eqmcli.cli.models", "import_app",
        "Bring a model trained elsewhere in as an eqm run directory.",
    ),
}


class EqmGroup(LazyCommandGroup):
    """The `eqm` group over `COMMANDS`."""

    registry = COMMANDS


def _eqm() -> None:
    """Deep face recognition experiments with the Equalized Margin (EqM) loss."""


app = typer.Typer(
    name="eqm",
    cls=EqmGroup,
    callback=_eqm,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Console-script entry point."""
    app()
