"""`eqm data ...`: inspect, convert and package data sets."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from eqmcli.cli.align import align_command
from eqmcli.cli.common import console, user_errors
from eqmcli.data.record import convert
from eqmcli.data.stats import DataStats, data_stats
from eqmcli.evaluation.pair_sets import write_bin

app = typer.Typer(help="Inspect, convert and package data sets.", no_args_is_help=True)
app.command("align")(align_command)


# ------------------------------------------------------------------ stats / convert
@app.command("stats")
@user_errors
def stats_command(
    source: Path = typer.Argument(
        ..., help="A record folder (train.rec/.idx), an image folder, or a recipe YAML."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Images, classes and the class-size distribution of a training source."""
    stats = data_stats(source)
    if as_json:
        typer.echo(json.dumps(stats.to_dict(), indent=2))
        return
    _render_stats(stats)


def _render_stats(s: DataStats) -> None:
    """Rich tables: the summary, then the class-size histogram with text bars."""
    summary = Table(title=f"{s.source} ({s.kind})", show_header=False)
    summary.add_column("quantity")
    summary.add_column("value", justify="right")
    summary.add_row("images", f"{s.images:,}")
    if s.test_images:
        summary.add_row("  training / held-out", f"{s.train_images:,} / {s.test_images:,}")
    summary.add_row("classes", f"{s.classes:,}")
    summary.add_row("images per class (mean)", f"{s.mean:.1f}")
    for name, value in s.quantiles.items():
        summary.add_row(f"images per class ({name})", f"{value:g}")
    share = s.classes_under_80 / s.classes
    summary.add_row("classes with < 80 images", f"{s.classes_under_80:,} ({share:.1%})")
    console.print(summary)

    hist = Table(title="class-size histogram (training images per class)")
    hist.add_column("images/class", justify="right")
    hist.add_column("classes", justify="right")
    hist.add_column("")
    peak = max((b.classes for b in s.histogram), default=1) or 1
    for b in s.histogram:
        span = f"{b.low}" if b.low == b.high else f"{b.low}-{b.high}"
        hist.add_row(span, f"{b.classes:,}", "#" * round(40 * b.classes / peak))
    console.print(hist)


@app.command("convert")
@user_errors
def convert_command(
    src: Path = typer.Argument(..., help="An image folder, or a record folder / train.rec."),
    dst: Path = typer.Argument(..., help="Output folder (absent or empty)."),
) -> None:
    """Image folder -> train.rec/train.idx/property, or record folder -> image folder."""
    result = convert(src, dst)
    console.print(
        f"{result['direction']}: wrote {result['images']:,} images of "
        f"{result['classes']:,} classes to {dst}",
        highlight=False,
    )


# ------------------------------------------------------------------------- make-bin
@app.command("make-bin")
@user_errors
def make_bin_command(
    images_root: Path = typer.Argument(
        ..., help="Folder the pairs file's image paths are relative to (for LFW: the lfw/ folder)."
    ),
    pairs_file: Path = typer.Argument(
        ..., help="'path_a path_b label' lines, or LFW's pairs.txt (header '10 300' or 'N')."
    ),
    out: Path = typer.Argument(..., help="The .bin file to write (e.g. my_set.bin)."),
) -> None:
    """Package aligned images + a pairs file as an InsightFace verification .bin."""
    pairs, images = write_bin(images_root, pairs_file, out)
    console.print(f"wrote {out}: {pairs:,} pairs, {images:,} distinct images", highlight=False)
