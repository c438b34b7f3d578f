"""`eqm bench all`: every benchmark with settings fit for the device, in one JSON.

Parts, in order: ``pipeline`` (loader images/s over 112x112 JPEGs from a .rec and an
image folder, per worker count), ``train`` (training-step images/s per option set, with
speedups against eager fp32), ``heads`` (fwd+bwd ms of each loss head relative to
NormFace) and ``head-cost`` (ms and bytes of the EqM head for large C). On CUDA the
settings are the full ones (iresnet50 at 112 px, batch 256, C = 10,575); on the CPU they
are scaled down so the whole suite takes a few minutes on a small machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from eqmcli.devices import resolve_device

PARTS: tuple[str, ...] = ("pipeline", "train", "heads", "head-cost")

#: per-part keyword arguments: (CUDA, CPU)
SUITE_SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "pipeline": (
        {"num_images": 2000, "batch_size": 128, "image_size": 112},
        {"num_images": 512, "batch_size": 64, "image_size": 112},
    ),
    "train": ({}, {}),  # the device defaults of `benchmark_training`
    "heads": (
        {"num_classes": 10575, "embedding_dim": 512, "batch_size": 256, "repeats": 10},
        {"num_classes": 10575, "embedding_dim": 512, "batch_size": 64, "repeats": 3},
    ),
    "head-cost": (
        {"batch": 256, "repeats": 5},
        {"batch": 64, "repeats": 2},
    ),
}

Reporter = Callable[[str, Any], None]
"""Called with (part name, rich Table) as each part finishes."""


def pipeline_table(summary: dict[str, Any]) -> Any:
    """A rich Table of `eqmcli.benchmarks.pipeline.results_to_dict` output."""
    from rich.table import Table

    table = Table(
        title=f"Input pipeline: 112x112 JPEGs, {summary['cpus']} CPUs "
        f"(default workers: {summary['default_num_workers']})"
    )
    for name in ("source", "workers", "images/s"):
        table.add_column(name, justify="left" if name == "source" else "right")
    for r in summary["results"]:
        mark = " (default)" if r["is_default"] else ""
        table.add_row(r["source"], f"{r['num_workers']}{mark}", f"{r['images_per_s']:,.0f}")
    return table


def heads_table(payload: dict[str, Any]) -> Any:
    """A rich Table of the heads part (ms per fwd+bwd and ratio to NormFace)."""
    from rich.table import Table

    s = payload["settings"]
    table = Table(
        title=f"Loss heads, fwd+bwd: C={s['num_classes']}, d={s['embedding_dim']}, "
        f"B={s['batch_size']}, median of {s['repeats']} interleaved rounds"
    )
    for name in ("head", "ms / step", "vs normface"):
        table.add_column(name, justify="left" if name == "head" else "right")
    for row in payload["rows"]:
        table.add_row(row["name"], f"{row['ms']:.1f}", f"{row['ratio']:.2f}x")
    return table


def run_all(
    device: str = "auto",
    *,
    parts: tuple[str, ...] = PARTS,
    report: Reporter | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run `parts` with the device's settings; returns the JSON-ready combined result.

    `overrides` replaces keyword arguments of a part (e.g. tiny settings in tests);
    `report(part, table)` is called as each part finishes. Times are seconds.
    """
    from eqmcli.benchmarks.head_cost import benchmark_head_cost, head_cost_table
    from eqmcli.benchmarks.heads import benchmark_heads
    from eqmcli.benchmarks.pipeline import pipeline_benchmark, results_to_dict
    from eqmcli.benchmarks.training import benchmark_training, environment, train_table
    from eqmcli.errors import UserError

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(
            f"unknown bench part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}"
        )
    target = resolve_device(device)
    started = time.perf_counter()
    combined: dict[str, Any] = {
        "benchmark": "all",
        "environment": environment(target),
        "cuda_available": torch.cuda.is_available(),
        "parts": {},
    }
    index = 0 if target.type == "cuda" else 1
    for part in parts:
        kwargs = {**SUITE_SETTINGS[part][index], **(overrides or {}).get(part, {})}
        part_started = time.perf_counter()
        if part == "pipeline":
            payload = results_to_dict(pipeline_benchmark(None, **kwargs))
            payload["settings"] = kwargs
            table = pipeline_table(payload)
        elif part == "train":
            result = benchmark_training(device=str(target), **kwargs)
            payload, table = result.to_dict(), train_table(result)
        elif part == "heads":
            rows = benchmark_heads(None, device=str(target), **kwargs)
            payload = {"benchmark": "heads", "settings": kwargs,
                       "rows": [row.to_dict() for row in rows]}
            table = heads_table(payload)
        else:
            cost = benchmark_head_cost(device=str(target), **kwargs)
            payload, table = cost.to_dict(), head_cost_table(cost)
        payload["seconds"] = time.perf_counter() - part_started
        combined["parts"][part] = payload
        if report is not None:
            report(part, table)
    combined["seconds"] = time.perf_counter() - started
    return combined
