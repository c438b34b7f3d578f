"""`eqm bench ...`: micro-benchmarks (loss heads; more subcommands join this sub-app)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from eqmcli.cli.common import console, user_errors

app = typer.Typer(help="Micro-benchmarks: time the building blocks.", no_args_is_help=True)


@app.command("heads")
@user_errors
def heads_command(
    classes: int = typer.Option(10575, "--classes", min=2, help="number of classes C"),
    dim: int = typer.Option(512, "--dim", min=1, help="embedding dimension d"),
    batch: int = typer.Option(256, "--batch", min=1, help="batch size B"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto"),
    repeats: int = typer.Option(10, "--repeats", min=1, help="timed rounds (median is kept)"),
    head: list[str] | None = typer.Option(
        None, "--head", help="a loss to time (repeatable; default: all)"
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)"
    ),
    clock: str = typer.Option(
        "wall", "--clock", help="wall, or cpu (this process's CPU time: steadier on a busy host)"
    ),
    json_path: Path | None = typer.Option(None, "--json", help="also write the rows here"),
) -> None:
    """Forward+backward time of each loss head relative to NormFace, same inputs."""
    from rich.table import Table

    from eqmcli.benchmarks.heads import benchmark_heads

    started = time.perf_counter()
    rows = benchmark_heads(
        head,
        num_classes=classes,
        embedding_dim=dim,
        batch_size=batch,
        device=device,
        repeats=repeats,
        threads=threads,
        clock=clock,
    )
    elapsed = time.perf_counter() - started
    table = Table(
        title=f"Loss heads, fwd+bwd: C={classes}, d={dim}, B={batch}, {device}, "
        f"{clock} clock, median of {repeats} interleaved rounds"
    )
    table.add_column("head")
    table.add_column("ms / step", justify="right")
    table.add_column("vs normface", justify="right")
    for row in rows:
        table.add_row(row.name, f"{row.ms:.1f}", f"{row.ratio:.2f}x")
    console.print(table)
    console.print(f"benchmark took {elapsed:.1f} s")
    payload = {
        "classes": classes,
        "dim": dim,
        "batch": batch,
        "device": device,
        "repeats": repeats,
        "threads": threads,
        "clock": clock,
        "seconds": elapsed,
        "rows": [row.to_dict() for row in rows],
    }
    _write_json(json_path, payload)


@app.command("pipeline")
@user_errors
def pipeline_command(
    workers: str | None = typer.Option(
        None, "--workers", help="comma-separated worker counts (default: 0..the default count)"
    ),
    images: int = typer.Option(2000, "--images", min=16, help="JPEGs to generate"),
    batch: int = typer.Option(128, "--batch", min=1, help="batch size B"),
    size: int = typer.Option(112, "--size", min=16, help="image side, pixels"),
    epochs: int = typer.Option(1, "--epochs", min=1, help="timed epochs after one warm-up"),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="keep/reuse the generated data here (default: a temp folder)"
    ),
    clock: str = typer.Option(
        "wall", "--clock", help="wall, or cpu (this process's CPU time: steadier on a busy host)"
    ),
    json_path: Path | None = typer.Option(None, "--json", help="also write the rows here"),
) -> None:
    """Input-pipeline images/s from a .rec and an image folder of JPEGs, per worker count."""

    from eqmcli.benchmarks.pipeline import pipeline_benchmark, results_to_dict
    from eqmcli.benchmarks.suite import pipeline_table
    from eqmcli.errors import UserError

    try:
        counts = [int(w) for w in workers.split(",")] if workers else None
    except ValueError:
        raise UserError(f"--workers {workers!r} is not a comma-separated list of ints") from None
    if counts is not None and min(counts) < 0:
        raise UserError(f"--workers {workers!r}: worker counts must be >= 0")
    results = pipeline_benchmark(
        counts, num_images=images, batch_size=batch, image_size=size, epochs=epochs, root=data_dir
    )
    summary = results_to_dict(results)
    table = pipeline_table(summary)
    table.title = (
        f"Input pipeline: {images} JPEGs of {size}x{size}, batch {batch}, "
        f"{summary['cpus']} CPUs (default workers: {summary['default_num_workers']})"
    )
    console.print(table)
    _write_json(json_path, summary)


def _write_json(json_path: Path | None, payload: dict) -> None:
    """Write `payload` as indented JSON to `json_path` (when given) and say so."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {json_path}")


@app.command("train")
@user_errors
def train_command(
    backbone: str | None = typer.Option(
        None, "--backbone", help="backbone (default: iresnet50 on CUDA, tiny on the CPU)"
    ),
    head: str = typer.Option("eqm", "--head", help="loss head"),
    classes: int | None = typer.Option(
        None, "--classes", help="number of classes C (default: 10575 on CUDA, 1000 on the CPU)"
    ),
    batch: int | None = typer.Option(
        None, "--batch", help="batch size (default: 256 on CUDA, 64 on the CPU)"
    ),
    size: int | None = typer.Option(
        None, "--size", help="image side in pixels (default: the backbone's, 112 or 48 for tiny)"
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="timed steps per configuration (default: 20 CUDA, 10 CPU)"
    ),
    warmup: int | None = typer.Option(
        None, "--warmup", help="untimed steps per configuration first (default: 5 CUDA, 2 CPU)"
    ),
    compile_: bool | None = typer.Option(
        None, "--compile/--no-compile",
        help="also time torch.compile (default: on CUDA only; minutes on a small CPU)",
    ),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto"),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for torch (default: torch's choice)"
    ),
    clock: str = typer.Option(
        "wall", "--clock", help="wall, or cpu (this process's CPU time: steadier on a busy host)"
    ),
    json_path: Path | None = typer.Option(None, "--json", help="also write the rows here"),
) -> None:
    """Training images/s (backbone + head + SGD) per precision / channels_last / compile."""
    from eqmcli.benchmarks.training import benchmark_training, train_table

    result = benchmark_training(
        backbone=backbone, head=head, classes=classes, batch=batch, size=size, steps=steps,
        warmup=warmup, device=device, include_compile=compile_, threads=threads, clock=clock,
    )
    console.print(train_table(result))
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"benchmark took {result.seconds:.1f} s")
    _write_json(json_path, result.to_dict())


@app.command("head-cost")
@user_errors
def head_cost_command(
    classes: str = typer.Option(
        "10575,85742,1000000", "--classes", help="comma-separated class counts C"
    ),
    dim: int = typer.Option(512, "--dim", help="embedding dimension d"),
    batch: int = typer.Option(256, "--batch", help="batch size B"),
    head: str = typer.Option("eqm", "--head", help="loss head"),
    repeats: int = typer.Option(3, "--repeats", help="timed steps per C (median is kept)"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the rows here"),
) -> None:
    """Head-only fwd+bwd time and peak memory for large C (sizes that do not fit are skipped)."""
    from eqmcli.benchmarks.head_cost import benchmark_head_cost, head_cost_table, parse_classes

    result = benchmark_head_cost(
        parse_classes(classes), head=head, dim=dim, batch=batch, device=device, repeats=repeats
    )
    console.print(head_cost_table(result))
    console.print(f"peak memory: {result.peak_method}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    _write_json(json_path, result.to_dict())


@app.command("all")
@user_errors
def all_command(
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto"),
    parts: str = typer.Option(
        "pipeline,train,heads,head-cost", "--parts", help="comma-separated parts to run"
    ),
    json_path: Path | None = typer.Option(None, "--json", help="write the combined JSON here"),
) -> None:
    """Every benchmark with device-appropriate settings: one table per part, one JSON."""
    from eqmcli.benchmarks.suite import run_all

    def report(part: str, table: object) -> None:
        console.print(table)

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    combined = run_all(device, parts=chosen, report=report)
    for part, payload in combined["parts"].items():
        for note in payload.get("notes", []):
            console.print(f"note ({part}): {note}", highlight=False)
    console.print(f"benchmark took {combined['seconds']:.1f} s")
    _write_json(json_path, combined)


@app.command("extract")
@user_errors
def extract_command(
    backbone: str = typer.Option("iresnet50", "--backbone", help="backbone to time"),
    size: int = typer.Option(112, "--size", min=16, help="image side, pixels"),
    batch: int = typer.Option(64, "--batch", min=1, help="images per batch"),
    batches: int = typer.Option(4, "--batches", min=1, help="timed batches after one warm-up"),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="also embed the flipped images"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
) -> None:
    """Embedding-extraction images/s (what `eqm eval` and `eqm analyze` spend their time on)."""
    from eqmcli.devices import resolve_device
    from eqmcli.embed import benchmark_extraction

    resolved = resolve_device(device)
    rate = benchmark_extraction(
        backbone, input_size=(size, size), batch_size=batch, batches=batches,
        device=str(resolved), flip=flip,
    )
    console.print(
        f"{backbone} {size}x{size}, batch {batch}, {'flip-test' if flip else 'no flip'}, "
        f"{resolved}: {rate:,.1f} images/s"
    )
