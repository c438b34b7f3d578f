"""`eqm embed`: features of image files from a run, a checkpoint or an ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqmcli.cli.common import Bgr, Mean, Std, console, err_console, user_errors
from eqmcli.evaluation.embed import embed_images

SHOWN_UNREADABLE = 10


@user_errors
def embed_command(
    model: Annotated[Path, typer.Argument(help="Run directory, checkpoint or .onnx file.")],
    source: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT", help="Image folder (recursive), one image, or a text file of paths."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="FEATURES.npy to write (N x d float32).")],
    flip: Annotated[
        bool, typer.Option("--flip", help="Embed f(x) + f(flipped x) (the flip-test).")
    ] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Do not L2-normalize the rows.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 256,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    mean: Mean = None,
    std: Std = None,
    bgr: Bgr = None,
) -> None:
    """Embed images: one row per image in FEATURES.npy (L2-normalized unless --raw).

    The image paths go in the same order to FEATURES.paths.txt; unreadable images are
    skipped and listed in FEATURES.unreadable.txt. MODEL may be an .onnx file (onnxruntime;
    --mean/--std/--bgr set its preprocessing when its metadata does not).
    """
    result = embed_images(
        model, source, out, flip=flip, raw=raw, batch_size=batch_size, device=device,
        progress=err_console.is_terminal, mean=mean, std=std, bgr=bgr,
    )
    if result.note:
        err_console.print(f"[yellow]Note:[/] {result.note}", highlight=False, soft_wrap=True)
    if result.resized_from:
        (h, w), (mh, mw) = result.resized_from, result.input_size
        err_console.print(
            f"[yellow]Note:[/] images ({h}×{w}) were resized to the model's input size "
            f"({mh}×{mw}).", soft_wrap=True,
        )
    if result.unreadable:
        err_console.print(
            f"[yellow]{len(result.unreadable)} unreadable image(s) skipped[/] "
            f"(listed in {result.unreadable_file}):", highlight=False, soft_wrap=True,
        )
        for name in result.unreadable[:SHOWN_UNREADABLE]:
            err_console.print(f"  {name}", highlight=False, markup=False, soft_wrap=True)
        if len(result.unreadable) > SHOWN_UNREADABLE:
            err_console.print(f"  ... and {len(result.unreadable) - SHOWN_UNREADABLE} more")
    kind = "L2-normalized" if result.normalized else "raw"
    console.print(
        f"wrote {result.features} ({result.count} x {result.dim} float32, {kind}"
        f"{', flip-test' if result.flip else ''}) and {result.paths_file}; "
        f"{result.images_per_second:,.1f} images/s",
        highlight=False, soft_wrap=True,
    )
