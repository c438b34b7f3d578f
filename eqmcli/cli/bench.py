"""`eqm bench ...`: parse options, call one `eqmcli.bench` function, render its tables here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from eqmcli.atomic import write_json
from eqmcli.bench.extraction import benchmark_extraction
from eqmcli.bench.head_cost import HeadCostResult, benchmark_head_cost
from eqmcli.bench.head_memory import HeadMemoryRow, measure_head_memory
from eqmcli.bench.heads import benchmark_heads
from eqmcli.bench.nearest_search import benchmark_nearest_centers
from eqmcli.bench.pipeline import pipeline_benchmark, results_to_dict
from eqmcli.bench.protocols import benchmark_ijb_scale, benchmark_megaface_scale
from eqmcli.bench.suite import PartResult, run_all
from eqmcli.bench.training import TrainBenchResult, benchmark_training
from eqmcli.cli.common import comma_separated_ints, console, user_errors
from eqmcli.devices import describe_machine, machine, resolve_device
from eqmcli.errors import UserError, shown

app = typer.Typer(help="Micro-benchmarks: time the building blocks.", no_args_is_help=True)

CLOCK_HELP = "wall, or cpu (this process's CPU time: steadier on a busy host)"
MIB = 2**20


# ------------------------------------------------------------------------ tables
def heads_table(payload: dict[str, Any]) -> Table:
    """Loss heads: ms per fwd+bwd and the ratio to NormFace."""
    s = payload["settings"]
    clock = f"{s['clock']} clock, " if "clock" in s else ""
    table = Table(
        title=f"Loss heads, fwd+bwd: C={s['num_classes']}, d={s['embedding_dim']}, "
        f"B={s['batch_size']}, {clock}median of {s['repeats']} interleaved rounds"
    )
    for name in ("head", "ms / step", "vs normface"):
        table.add_column(name, justify="left" if name == "head" else "right")
    for row in payload["rows"]:
        table.add_row(row["name"], f"{row['ms']:.1f}", f"{row['ratio']:.2f}x")
    return table


def pipeline_table(summary: dict[str, Any]) -> Table:
    """Input pipeline: images/s per source and worker count."""
    s = summary.get("settings", {})
    size = s.get("image_size", 112)
    table = Table(
        title=f"Input pipeline: {size}x{size} JPEGs, {summary['cpus']} CPUs "
        f"(default workers: {summary['default_num_workers']})"
    )
    for name in ("source", "workers", "images/s"):
        table.add_column(name, justify="left" if name == "source" else "right")
    for r in summary["results"]:
        mark = " (default)" if r["is_default"] else ""
        table.add_row(r["source"], f"{r['num_workers']}{mark}", f"{r['images_per_s']:,.0f}")
    return table


def train_table(result: TrainBenchResult) -> Table:
    """Training step: one row per configuration, ratios against eager fp32."""
    s, env = result.settings, result.environment
    table = Table(
        title=f"Training step: {s['backbone']} {s['size'][0]}x{s['size'][1]} + {s['head']} "
        f"(C={s['classes']}), batch {s['batch']}, {env['device_name']} ({env['device']}), "
        f"{s['threads']} thread(s), {s['clock']} clock, median of {s['steps']} interleaved steps"
    )
    for name, justify in (("config", "left"), ("ms / step", "right"), ("images/s", "right"),
                          ("vs fp32 eager", "right"), ("first loss", "right"),
                          ("warm-up s", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in result.rows:
        if row.skipped:
            table.add_row(row.config, "-", "-", "skipped", "-", "-")
            continue
        loss = f"{row.first_loss:.4f}" if row.loss_finite else "[red]non-finite[/]"
        table.add_row(
            row.config, f"{row.ms_per_step:.1f}", f"{row.images_per_s:,.0f}",
            f"{row.speedup:.2f}x", loss, f"{row.warmup_s:.1f}",
        )
    return table


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:,.0f}"


def head_cost_table(result: HeadCostResult) -> Table:
    """Head cost: ms and MiB per class count."""
    s, env = result.settings, result.environment
    table = Table(
        title=f"Head cost, fwd+bwd: {s['head']}, d={s['dim']}, B={s['batch']}, "
        f"{env['device_name']} ({env['device']}), median of {s['repeats']}; MiB"
    )
    for name in ("classes", "ms / step", "W", "grad W", "saved for bwd", "peak", "estimate"):
        table.add_column(name, justify="right")
    for row in result.rows:
        if row.skipped:
            table.add_row(f"{row.classes:,}", "skipped", "-", "-", "-", "-",
                          _mib(row.estimated_bytes))
            continue
        table.add_row(
            f"{row.classes:,}", f"{row.ms:.1f}", _mib(row.weight_bytes), _mib(row.grad_bytes),
            _mib(row.saved_bytes), _mib(row.peak_bytes), _mib(row.estimated_bytes),
        )
    return table


def head_memory_table(rows: list[HeadMemoryRow], classes: int, dim: int, batch: int) -> Table:
    """Sharded head: MiB per rank (largest shard) for each world size."""
    table = Table(title=f"Sharded EqM head per rank: C={classes:,}, d={dim}, global batch "
                        f"{batch}, fp32, MiB on the rank with the largest shard")
    for name in ("ranks", "classes", "weight", "momentum", "grad", "activations", "total",
                 "x 1 rank"):
        table.add_column(name, justify="right")
    first = rows[0].total_bytes * rows[0].world_size if rows else 1
    for row in rows:
        table.add_row(
            str(row.world_size), f"{row.classes:,}", *(f"{b / MIB:,.1f}" for b in (
                row.weight_bytes, row.momentum_bytes, row.grad_bytes, row.activation_bytes,
                row.total_bytes)), f"{row.total_bytes / first:.3f}",
        )
    return table


PART_TABLES = {
    "pipeline": pipeline_table,
    "heads": heads_table,
}


def _write_json(json_path: Path | None, payload: dict) -> None:
    """Print the machine the figures come from; write `payload` with it (under "machine",
    unless its environment holds it already) as indented JSON to `json_path`, atomically."""
    host = payload.get("environment", {}).get("machine") or machine()
    console.print(f"machine: {describe_machine(host)}", highlight=False)
    if json_path is not None:
        if "machine" not in payload.get("environment", {}):
            payload = {**payload, "machine": host}
        write_json(json_path, payload)
        console.print(f"wrote {json_path}")


def _notes(notes: list[str], prefix: str = "note") -> None:
    for note in notes:
        console.print(f"{prefix}: {note}", highlight=False)


# ---------------------------------------------------------------------- commands
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
    clock: str = typer.Option("wall", "--clock", help=CLOCK_HELP),
    json_path: Path | None = typer.Option(None, "--json", help="also write the rows here"),
) -> None:
    """Forward+backward time of each loss head relative to NormFace, same inputs."""
    started = time.perf_counter()
    rows = benchmark_heads(
        head, num_classes=classes, embedding_dim=dim, batch_size=batch, device=device,
        repeats=repeats, threads=threads, clock=clock,
    )
    elapsed = time.perf_counter() - started
    settings = {"num_classes": classes, "embedding_dim": dim, "batch_size": batch,
                "repeats": repeats, "clock": clock}
    console.print(heads_table({"settings": settings, "rows": [r.to_dict() for r in rows]}))
    console.print(f"benchmark took {elapsed:.1f} s")
    payload = {
        "classes": classes, "dim": dim, "batch": batch, "device": device, "repeats": repeats,
        "threads": threads, "clock": clock, "seconds": elapsed,
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
    json_path: Path | None = typer.Option(None, "--json", help="also write the rows here"),
) -> None:
    """Input-pipeline images/s from a .rec and an image folder of JPEGs, per worker count."""
    counts = comma_separated_ints(workers, "--workers") if workers else None
    if counts is not None and (not counts or min(counts) < 0):
        raise UserError(f"--workers {shown(workers)}: worker counts must be >= 0")
    results = pipeline_benchmark(
        counts, num_images=images, batch_size=batch, image_size=size, epochs=epochs, root=data_dir
    )
    summary = results_to_dict(results)
    summary["settings"] = {"num_images": images, "batch_size": batch, "image_size": size}
    table = pipeline_table(summary)
    table.title = f"{table.title}; {images} images, batch {batch}"
    console.print(table)
    _write_json(json_path, summary)


@app.command("train")
@user_errors
def bench_train_command(
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
    clock: str = typer.Option("wall", "--clock", help=CLOCK_HELP),
    json_path: Path | None = typer.Option(None, "--json", help="also write the rows here"),
) -> None:
    """Images/s of the training step `eqm train` runs, per precision / channels_last / compile."""
    result = benchmark_training(
        backbone=backbone, head=head, classes=classes, batch=batch, size=size, steps=steps,
        warmup=warmup, device=device, include_compile=compile_, threads=threads, clock=clock,
    )
    console.print(train_table(result))
    _notes(result.notes)
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
    result = benchmark_head_cost(
        comma_separated_ints(classes, "--classes"), head=head, dim=dim, batch=batch,
        device=device, repeats=repeats,
    )
    console.print(head_cost_table(result))
    console.print(f"peak memory: {result.peak_method}", highlight=False)
    _notes(result.notes)
    _write_json(json_path, result.to_dict())


@app.command("head-memory")
@user_errors
def head_memory_command(
    classes: int = typer.Option(85_742, "--classes", help="number of classes C (MS1M)"),
    dim: int = typer.Option(512, "--dim", help="embedding dimension d"),
    batch: int = typer.Option(512, "--batch", help="global batch (all ranks)"),
    world_sizes: str = typer.Option("1,2,4", "--world-sizes", help="comma-separated rank counts"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the rows here"),
) -> None:
    """Per-rank bytes of the class-sharded head (CPU processes with Gloo)."""
    sizes = tuple(comma_separated_ints(world_sizes, "--world-sizes"))
    rows = measure_head_memory(classes, dim, batch, sizes)
    console.print(head_memory_table(rows, classes, dim, batch))
    _write_json(json_path, {"benchmark": "head-memory", "classes": classes, "dim": dim,
                            "batch": batch, "rows": [row.to_dict() for row in rows]})


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

    def report(part: str, result: PartResult) -> None:
        if isinstance(result, TrainBenchResult):
            console.print(train_table(result))
        elif isinstance(result, HeadCostResult):
            console.print(head_cost_table(result))
        else:
            console.print(PART_TABLES[part](result))

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    combined = run_all(device, parts=chosen, report=report)
    for part, payload in combined["parts"].items():
        _notes(payload.get("notes", []), f"note ({part})")
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
    resolved = resolve_device(device)
    rate = benchmark_extraction(
        backbone, input_size=(size, size), batch_size=batch, batches=batches,
        device=str(resolved), flip=flip,
    )
    console.print(
        f"{backbone} {size}x{size}, batch {batch}, {'flip-test' if flip else 'no flip'}, "
        f"{resolved}: {rate:,.1f} images/s"
    )


@app.command("analysis")
@user_errors
def analysis_command(
    classes: int = typer.Option(85742, "--classes", help="number of class centres C (MS1M)"),
    dim: int = typer.Option(512, "--dim", help="embedding dimension d"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto"),
    block: int | None = typer.Option(None, "--block", help="block side (default per device)"),
    check: bool = typer.Option(
        False, "--check/--no-check", help="also run the plain float64 search and compare"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of the random centres"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the result here"),
) -> None:
    """Time and peak extra memory of the per-class margin (nearest class centre) search."""
    result = benchmark_nearest_centers(
        classes, dim, device=device, block=block, check=check, seed=seed
    )
    table = Table(
        title=f"Nearest class centre of every class: C={classes:,}, d={dim}, {result.device}, "
        f"{result.threads} threads, blocks of {result.block}"
    )
    for name in ("search", "wall s", "CPU s", "peak extra MiB", "classes differing"):
        table.add_column(name, justify="left" if name == "search" else "right")
    peak = result.peak_extra_bytes
    table.add_row(
        "float32 blocks + float64 re-check", f"{result.seconds:.1f}",
        f"{result.cpu_seconds:.1f}", "-" if peak is None else f"{peak / 2**20:,.0f}", "",
    )
    if result.exact_seconds is not None:
        table.add_row(
            "plain float64 (reference)", f"{result.exact_seconds:.1f}",
            f"{result.exact_cpu_seconds:.1f}", "", f"{result.mismatches:,}",
        )
    console.print(table)
    console.print(f"peak memory: {result.peak_method}", highlight=False)
    _write_json(json_path, result.to_dict())


@app.command("protocols")
@user_errors
def protocols_command(
    ijb: bool = typer.Option(True, "--ijb/--no-ijb", help="IJB-C 1:1 aggregation + scoring"),
    megaface: bool = typer.Option(
        True, "--megaface/--no-megaface", help="MegaFace 3.5k probes x 1M distractors search"
    ),
    scale: float = typer.Option(1.0, "--scale", min=1e-4, max=1.0, help="fraction of the sizes"),
    dim: int = typer.Option(512, "--dim", help="feature dimension d"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the results here"),
) -> None:
    """Time and peak extra memory of IJB-C scoring and MegaFace search on random features."""
    results = ([benchmark_ijb_scale(scale, dim)] if ijb else []) + (
        [benchmark_megaface_scale(scale, dim)] if megaface else []
    )
    table = Table(title=f"Benchmark protocols at scale {scale:g} (random features, d={dim})")
    for name in ("benchmark", "sizes", "wall s", "CPU s", "peak extra MiB", "parts (s)"):
        numeric = name in ("wall s", "CPU s", "peak extra MiB")
        table.add_column(name, justify="right" if numeric else "left")
    for r in results:
        peak = r.peak_extra_bytes
        table.add_row(
            r.benchmark, ", ".join(f"{k} {v:,}" for k, v in r.sizes.items()),
            f"{r.seconds:.1f}", f"{r.cpu_seconds:.1f}",
            "-" if peak is None else f"{peak / 2**20:,.0f}",
            ", ".join(f"{k} {v:.1f}" for k, v in r.parts.items()),
        )
    console.print(table)
    if results:
        console.print(f"peak memory: {results[0].peak_method}", highlight=False)
    _write_json(json_path, {"benchmark": "protocols", "results": [r.to_dict() for r in results]})
