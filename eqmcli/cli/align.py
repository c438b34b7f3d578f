"""`eqm data align SRC DST --landmarks FILE`: 5-point alignment onto a standard template."""

from __future__ import annotations

from pathlib import Path

import typer

from eqmcli.cli.common import console, err_console, user_errors
from eqmcli.data.align import align_folder


@user_errors
def align_command(
    src: Path = typer.Argument(..., help="Folder the landmark file's image paths are under."),
    dst: Path = typer.Argument(..., help="Output folder (crops keep their relative paths)."),
    landmarks: Path = typer.Option(
        ...,
        "--landmarks",
        help="'name x1 y1 ... x5 y5' lines, optionally + a score column: left eye, right eye, "
        "nose, left and right mouth corner, in source pixels (InsightFace's "
        "*_name_5pts_score.txt layout).",
    ),
    template: str = typer.Option(
        "arcface-112",
        "--template",
        help="arcface-112 (112x112 ArcFace crops) or sphereface-112x96 (112x96 SphereFace/"
        "CosFace crops, height x width).",
    ),
) -> None:
    """Align faces by 5 landmarks (similarity transform, scikit-image) onto a template.

    Images listed but absent, unreadable or with landmarks far outside the image are
    skipped and listed in DST/align_report.txt.
    """
    report = align_folder(src, dst, landmarks, template)
    console.print(
        f"aligned {report.written:,} images onto {report.template} into {dst}", highlight=False
    )
    skipped = len(report.missing) + len(report.unreadable)
    if skipped:
        err_console.print(
            f"[yellow]Note:[/] {len(report.missing):,} listed images are missing and "
            f"{len(report.unreadable):,} could not be aligned (unreadable, or landmarks "
            f"outside the image); they were skipped and are listed in "
            f"{report.report_file}",
            highlight=False,
            soft_wrap=True,
        )
