"""`eqm import insightface` and `eqm export`: models in from InsightFace, out to ONNX or it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqmcli.cli.common import console, user_errors
from eqmcli.errors import UserError
from eqmcli.interop.insightface import export_insightface, import_insightface, training_source
from eqmcli.interop.onnx import PARITY_TOLERANCE, export_onnx

import_app = typer.Typer(
    help="Bring a model trained elsewhere in as an eqm run directory.", no_args_is_help=True
)


@import_app.command("insightface")
@user_errors
def import_insightface_command(
    weights: Annotated[
        Path, typer.Argument(help="arcface_torch backbone.pth / model.pt (a state_dict).")
    ],
    arch: Annotated[str, typer.Option("--arch", help="r18, r34, r50, r100 or mbf.")],
    out: Annotated[Path, typer.Option("--out", help="New run directory to create.")],
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            help="Partial FC shards, quoted: 'DIR/checkpoint_gpu_*.pt' (or DIR); class centres "
            "for 'eqm analyze'.",
        ),
    ] = None,
    embedding_dim: Annotated[
        int, typer.Option("--embedding-dim", min=2, help="Embedding size of the model.")
    ] = 512,
    input_size: Annotated[
        int, typer.Option("--input-size", min=16, help="Square input size, pixels.")
    ] = 112,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="The model's training data (folder with train.rec + train.idx, or "
            "root/<identity>/), recorded for 'eqm analyze'.",
        ),
    ] = None,
) -> None:
    """Import InsightFace arcface_torch weights as a run directory (eval/analyze/embed/export).

    Every tensor is mapped by name and its shape checked; preprocessing is InsightFace's
    (RGB, (x/255 - 0.5)/0.5). The head's loss is recorded as ArcFace s=64, m=0.5.
    """
    result = import_insightface(
        weights, arch, out, head=head, embedding_dim=embedding_dim, input_size=input_size,
        data=training_source(data) if data is not None else None,
    )
    centres = (
        f"; head: {result.num_classes:,} class centres from {len(result.head_files)} shard(s)"
        if result.num_classes
        else "; no head (pass --head for 'eqm analyze')"
    )
    console.print(
        f"imported {weights} as {result.backbone}: {result.tensors} tensors{centres}",
        highlight=False, soft_wrap=True,
    )
    console.print(f"wrote {result.run_dir} (try: eqm eval {result.run_dir} --lfw)", highlight=False)


@user_errors
def export_command(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    onnx: Annotated[
        Path | None, typer.Option("--onnx", help="Write the backbone as an ONNX model here.")
    ] = None,
    opset: Annotated[int, typer.Option("--opset", min=7, help="ONNX opset version.")] = 18,
    batch: Annotated[
        str, typer.Option("--batch", help="ONNX batch dimension: 'dynamic' or a fixed N.")
    ] = "dynamic",
    insightface: Annotated[
        Path | None,
        typer.Option("--insightface", help="Write an arcface_torch backbone.pth here."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --onnx / --insightface file.")
    ] = False,
) -> None:
    """Export a run's backbone: ONNX (verified with onnxruntime) and/or arcface_torch weights."""
    if onnx is None and insightface is None:
        raise UserError("name what to write: --onnx FILE.onnx and/or --insightface FILE.pth")
    if onnx is not None and insightface is not None and onnx.resolve() == insightface.resolve():
        raise UserError(f"--onnx and --insightface both name {onnx}; name two files")
    if onnx is not None:
        done = export_onnx(run, onnx, opset=opset, batch=batch, force=force)
        (h, w), shape = done.input_size, "N" if done.batch is None else str(done.batch)
        console.print(
            f"wrote {done.path}: opset {done.opset}, input {shape}x3x{h}x{w} float "
            f"({done.metadata['eqm.color_order']}, {done.metadata['eqm.normalization']}), "
            f"output {shape}x{done.embedding_dim}",
            highlight=False, soft_wrap=True,
        )
        console.print(
            f"onnxruntime vs torch (fp32, {done.checked_images} random images): max |Δ| = "
            f"{done.max_abs_diff:.2e} (limit {PARITY_TOLERANCE:g})",
            highlight=False,
        )
    if insightface is not None:
        path, count = export_insightface(run, insightface, force=force)
        console.print(f"wrote {path}: {count} tensors in arcface_torch's names", highlight=False)
