"""`eqm analyze RUN`: per-class scope / margin / accuracy of a trained run (the imbalance study)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from eqmcli.analysis.study import analyze_run
from eqmcli.cli.common import console, user_errors
from eqmcli.errors import UserError


def _fmt(value: float | None, spec: str = ".2f", scale: float = 1.0) -> str:
    return "-" if value is None else format(scale * value, spec)


def _mean(stats: dict[str, Any]) -> str:
    return _fmt(stats.get("mean"), ".1f")


def _cv(stats: dict[str, Any]) -> str:
    return _fmt(stats.get("cv"), ".2f")


def render_summary(summary: dict[str, Any]) -> Table:
    """The summary as a rich table: one row per group, then one per class-size bin."""
    title = (
        f"{summary.get('run')} ({summary.get('loss')}): {summary.get('num_classes')} classes, "
        f"{summary.get('samples')} {summary.get('split')}-split images"
    )
    caption = (
        f"classes: all, fewer than / at least {summary['head_classes']} training images, "
        "then size bins; angles in degrees (mean over classes), CV = std / mean; "
        f"hard = cos to own centre < t1 = {summary.get('t1'):g} "
        f"({escape(str(summary.get('t1_source')))})"
    )
    table = Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),
        pad_edge=False,
        show_edge=False,
    )
    headers = [
        "classes",
        "n",
        "margin",
        "CV",
        "scope\nmax",
        "CV",
        "scope\nmean",
        "CV",
        "acc\n%",
        "hard\n%",
        "hard\nacc %",
        "easy\nacc %",
    ]
    for name in headers:
        if name == "classes":
            table.add_column(name, no_wrap=True, min_width=7)
        else:
            table.add_column(name, justify="right", no_wrap=name != "classes")
    short = {
        "all": "all",
        "few": f"<{summary['head_classes']}",
        "many": f">={summary['head_classes']}",
    }
    rows = [(short.get(key, key), g) for key, g in summary["groups"].items()]
    rows += [(b["label"], b) for b in summary["bins"]]
    for i, (label, g) in enumerate(rows):
        table.add_row(
            label,
            str(g["classes"]),
            _mean(g["margin_deg"]),
            _cv(g["margin_deg"]),
            _mean(g["scope_max_deg"]),
            _cv(g["scope_max_deg"]),
            _mean(g["scope_mean_deg"]),
            _cv(g["scope_mean_deg"]),
            _fmt(g["accuracy"], ".1f", 100),
            _fmt(g["hard_fraction"], ".1f", 100),
            _fmt(g["accuracy_hard"], ".1f", 100),
            _fmt(g["accuracy_easy"], ".1f", 100),
            end_section=i == len(summary["groups"]) - 1,
        )
    return table


@user_errors
def analyze_command(
    run: Path = typer.Argument(
        ..., help="run directory (or a checkpoint file inside one; not an .onnx model, "
        "which holds no class centres)"
    ),
    head_classes: int = typer.Option(
        80, "--head-classes", help="classes with fewer training images form the 'few' group"
    ),
    split: str = typer.Option(
        "train", "--split", help="train, or test (the closed-set held-out images)"
    ),
    max_per_class: int | None = typer.Option(
        None, "--max-per-class", help="embed at most N images per class (reproducible sample)"
    ),
    t1: float | None = typer.Option(
        None, "--t1", help="hard-sample threshold (cosine); default: the run's EqM t1, else 0.5"
    ),
    flip: bool = typer.Option(
        False, "--flip/--no-flip", help="use flip-fused embeddings f(x)+f(flip x)"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of the per-class sample"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    data_root: Path | None = typer.Option(
        None, "--data-root",
        help="the training data folder (image folder or .rec folder) when the run's "
        "recorded data.train.root is not valid here (moved data, a relative path)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print summary.json only, on stdout"),
) -> None:
    """Per-class intra-class scope, inter-class margin and accuracy vs class size.

    Writes RUN/analysis/per_class.csv, summary.json (and features.npz for 2-D/3-D
    embeddings, for 'eqm plot --figure sphere').
    """
    if run.suffix.lower() == ".onnx":
        raise UserError(
            f"{run} is an ONNX model: it holds the backbone only, no class centres to "
            "analyze; run 'eqm analyze' on the run directory it was exported from"
        )
    if split not in ("train", "test"):
        raise UserError(f"--split must be 'train' or 'test', got {split!r}")
    result = analyze_run(
        run,
        head_classes=head_classes,
        split=split,  # type: ignore[arg-type]
        max_per_class=max_per_class,
        t1=t1,
        device=device,
        seed=seed,
        flip=flip,
        batch_size=batch_size,
        data_root=data_root,
        progress=not as_json,
    )
    if as_json:
        typer.echo(json.dumps(result.summary, indent=2))
        return
    console.print(render_summary(result.summary))
    written = [result.csv_path, result.summary_path]
    if result.features_path is not None:
        written.append(result.features_path)
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)
