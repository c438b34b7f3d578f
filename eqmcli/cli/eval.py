"""`eqm eval`: 10-fold face verification of a trained run on benchmarks or the user's pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from eqmcli.cli.benchmark_tables import protocol_tables
from eqmcli.cli.common import (
    Bgr,
    Mean,
    Std,
    comma_separated_ints,
    console,
    err_console,
    user_errors,
)
from eqmcli.evaluation.evaluate import EvalReport, run_evaluation
from eqmcli.evaluation.ijb.protocol import IjbOptions
from eqmcli.evaluation.protocols import ProtocolOptions
from eqmcli.evaluation.verification import SetEvaluation

NOT_REPORTED = "—"


def _pct(value: float | None, digits: int = 2) -> str:
    return NOT_REPORTED if value is None else f"{100.0 * value:.{digits}f}"


def _accuracy(mean: float | None, std: float | None) -> str:
    return NOT_REPORTED if mean is None or std is None else f"{_pct(mean)} ± {_pct(std)}"


def render_table(results: list[SetEvaluation]) -> Any:
    """A rich table of results: accuracies/TAR/EER as percentages, thresholds in cosine units."""
    flip = any(r.flip for r in results)
    title = "10-fold verification" + (", flip-test" if flip else "")
    title += " (%; threshold in cosine units)"
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 0),
    )
    table.add_column("benchmark", style="bold", no_wrap=True)
    table.add_column("pairs", justify="right", no_wrap=True)
    table.add_column("acc ± std", justify="right", no_wrap=True)
    if flip:
        table.add_column("noflip", justify="right", no_wrap=True)
    table.add_column("cos thr", justify="right", no_wrap=True)
    table.add_column("TAR@1e-3", justify="right", no_wrap=True)
    table.add_column("TAR@1e-4", justify="right", no_wrap=True)
    table.add_column("AUC", justify="right", no_wrap=True)
    table.add_column("EER", justify="right", no_wrap=True)
    for evaluation in results:
        r = evaluation.result
        row = [
            evaluation.benchmark,
            f"{r.pairs:,}",
            _accuracy(r.accuracy, r.accuracy_std),
        ]
        if flip:
            row.append(_pct(evaluation.noflip.accuracy if evaluation.noflip else None))
        row += [
            NOT_REPORTED if r.threshold is None else f"{r.threshold:.4f}",
            _pct(r.tar_at_far.get("1e-03")),
            _pct(r.tar_at_far.get("1e-04")),
            NOT_REPORTED if r.auc is None else f"{r.auc:.4f}",
            _pct(r.eer),
        ]
        table.add_row(*row)
    return table


# Options, one type each, so the command's signature reads as a list of its flags.
Target = Annotated[
    Path,
    typer.Argument(
        help="Run directory (uses checkpoints/last.pt), a checkpoint file or an .onnx model."
    ),
]
# benchmark flags
Lfw = Annotated[bool, typer.Option("--lfw", help="LFW (lfw.bin, or lfw/ + pairs.txt).")]
CfpFp = Annotated[bool, typer.Option("--cfp-fp", help="CFP-FP (cfp_fp.bin).")]
AgeDb30 = Annotated[bool, typer.Option("--agedb-30", help="AgeDB-30 (agedb_30.bin).")]
Calfw = Annotated[bool, typer.Option("--calfw", help="CALFW (calfw.bin).")]
Cplfw = Annotated[bool, typer.Option("--cplfw", help="CPLFW (cplfw.bin).")]
Ijbb = Annotated[
    bool, typer.Option("--ijbb", help="IJB-B 1:1 (and 1:N when its lists exist): IJBB/.")
]
Ijbc = Annotated[
    bool, typer.Option("--ijbc", help="IJB-C 1:1 (and 1:N when its lists exist): IJBC/.")
]
Ytf = Annotated[bool, typer.Option("--ytf", help="YouTube Faces: aligned_images_DB/ + splits.txt.")]
Megaface = Annotated[
    bool, typer.Option("--megaface", help="MegaFace challenge 1: the devkit's lists + images.")
]
# the other options
PairsFile = Annotated[
    Path | None,
    typer.Option("--pairs", help="Your own pairs: 'path_a path_b label' lines (label 1/0; "
                 "10 folds in file order; paths relative to the file or --images-root; "
                 "docs/reference.md §2), LFW's pairs.txt, or a .bin (eqm data make-bin)."),
]
ImagesRoot = Annotated[
    Path | None, typer.Option("--images-root", help="Folder the --pairs paths are relative to.")
]
DataRoot = Annotated[
    Path | None,
    typer.Option(
        "--data-root",
        help="Folder with <name>.bin / lfw/ (default: recipe eval.data_root, then $EQM_DATA_ROOT).",
    ),
]
NoFlip = Annotated[bool, typer.Option("--no-flip", help="Embed f(x) only (no flip-test).")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per batch.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DetectorScore = Annotated[
    bool,
    typer.Option(
        "--detector-score/--no-detector-score",
        help="IJB: weight each image by its detector score (InsightFace's default).",
    ),
]
FeatureNorm = Annotated[
    bool,
    typer.Option(
        "--feature-norm/--no-feature-norm",
        help="IJB: keep each image feature's norm as a weight (InsightFace's default).",
    ),
]
YtfFrames = Annotated[
    int, typer.Option("--ytf-frames", help="YTF: evenly spaced frames per video (0 = all).")
]
MegafaceSizes = Annotated[
    str, typer.Option("--megaface-sizes", help="MegaFace: distractor counts, comma-separated.")
]
MegafaceFeatures = Annotated[
    Path | None,
    typer.Option(
        "--megaface-features",
        help="MegaFace: precomputed devkit feature files (DIR/facescrub/, DIR/megaface/) "
        "instead of embedding the images.",
    ),
]
MegafaceSuffix = Annotated[
    str, typer.Option("--megaface-feature-suffix", help="MegaFace: feature file suffix.")
]
NoCache = Annotated[
    bool, typer.Option("--no-cache", help="IJB/YTF/MegaFace: embed again (ignore RUN/eval/cache/).")
]
Missing = Annotated[
    str,
    typer.Option(
        "--missing",
        help="Pairs naming an image file that does not exist: error (refuse the set), skip "
        "(leave them out; count printed) or count-wrong (score them as failures).",
    ),
]
OutDir = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Folder for the results (default: RUN/eval/ for checkpoints/last.pt, "
        "RUN/eval/<name>/ for another checkpoint, MODEL.eval/ beside any other model file).",
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the results as JSON on stdout (nothing else).")
]


def print_report(report: EvalReport, as_json: bool) -> None:
    """Notes and warnings on stderr; then the JSON, or the tables and the files written."""
    if report.resized_from and report.input_size:
        (h, w), (mh, mw) = report.resized_from, report.input_size
        err_console.print(
            f"[yellow]Note:[/] test images ({h}×{w}) were resized to the model's "
            f"input size ({mh}×{mw})."
        )
    for note in report.notes:
        err_console.print(f"[yellow]Note:[/] {note}", highlight=False, soft_wrap=True)
    for warning in report.warnings:
        err_console.print(f"[yellow]Warning:[/] {warning}", highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    if report.results:
        console.print(render_table(report.results))
    for table in protocol_tables(report.protocol_results):
        console.print(table)
    for path in report.written:
        console.print(f"wrote {path}", highlight=False, markup=False, soft_wrap=True)


@user_errors
def eval_command(
    target: Target,
    lfw: Lfw = False,
    cfp_fp: CfpFp = False,
    agedb_30: AgeDb30 = False,
    calfw: Calfw = False,
    cplfw: Cplfw = False,
    pairs: PairsFile = None,
    images_root: ImagesRoot = None,
    data_root: DataRoot = None,
    no_flip: NoFlip = False,
    batch_size: BatchSize = None,
    device: Device = "auto",
    ijbb: Ijbb = False,
    ijbc: Ijbc = False,
    detector_score: DetectorScore = True,
    feature_norm: FeatureNorm = True,
    ytf: Ytf = False,
    ytf_frames: YtfFrames = 100,
    megaface: Megaface = False,
    megaface_sizes: MegafaceSizes = "10,100,1000,10000,100000,1000000",
    megaface_features: MegafaceFeatures = None,
    megaface_feature_suffix: MegafaceSuffix = "_eqm.bin",
    no_cache: NoCache = False,
    out: OutDir = None,
    missing: Missing = "error",
    mean: Mean = None,
    std: Std = None,
    bgr: Bgr = None,
    as_json: AsJson = False,
) -> None:
    """Evaluate a trained model: 10-fold verification, IJB-B/C, YouTube Faces, MegaFace.

    The model: a run directory, a checkpoint or an .onnx file (--mean/--std/--bgr set an
    ONNX model's preprocessing when its metadata does not).

    Pair sets: mean ± population std of 10 contiguous folds; thresholds in cosine units.

    IJB: TAR at FAR 1e-6 ... 1e-1 and AUC; 1:N: CMC and TPIR at FPIR (open set).

    YTF: 10-fold accuracy over the official splits. MegaFace: rank-1, TAR at FAR 1e-6.

    No benchmark flag: the recipe's eval sets. Results: RUN/eval/<benchmark>.json for a
    run's last.pt, RUN/eval/best/ for best.pt, MODEL.eval/ beside another model file, or
    --out DIR; each records the model file, its SHA-256 and the preprocessing.
    """
    protocols = ProtocolOptions(
        ijbb=ijbb, ijbc=ijbc, ytf=ytf, megaface=megaface,
        ijb=IjbOptions(detector_score=detector_score, feature_norm=feature_norm),
        ytf_frames=ytf_frames,
        megaface_sizes=tuple(comma_separated_ints(megaface_sizes, "--megaface-sizes")),
        megaface_features=megaface_features, megaface_feature_suffix=megaface_feature_suffix,
        cache=not no_cache,
    )
    flags = {"lfw": lfw, "cfp_fp": cfp_fp, "agedb_30": agedb_30, "calfw": calfw, "cplfw": cplfw}
    report = run_evaluation(
        target, benchmarks=[name for name, on in flags.items() if on], pairs_file=pairs,
        images_root=images_root, data_root=data_root, flip=not no_flip, batch_size=batch_size,
        device=device, progress=err_console.is_terminal, protocols=protocols, out=out,
        missing=missing, mean=mean, std=std, bgr=bgr,
    )
    print_report(report, as_json)
