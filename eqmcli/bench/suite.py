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

from eqmcli.bench.head_cost import HeadCostResult, benchmark_head_cost
from eqmcli.bench.heads import benchmark_heads
from eqmcli.bench.pipeline import pipeline_benchmark, results_to_dict
from eqmcli.bench.training import TrainBenchResult, benchmark_training
from eqmcli.devices import environment, resolve_device
from eqmcli.errors import UserError

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

PartResult = TrainBenchResult | HeadCostResult | dict[str, Any]
Reporter = Callable[[str, PartResult], None]
"""Called with (part name, its result) as each part finishes: a `TrainBenchResult` for
"train", a `HeadCostResult` for "head-cost", the JSON-ready payload for the others."""


def run_all(
    device: str = "auto",
    *,
    parts: tuple[str, ...] = PARTS,
    report: Reporter | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run `parts` with the device's settings; returns the JSON-ready combined result.

    `overrides` replaces keyword arguments of a part (e.g. tiny settings in tests);
    `report(part, result)` is called as each part finishes. Times are seconds.
    """
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
        result = _run_part(part, str(target), kwargs)
        payload = result if isinstance(result, dict) else result.to_dict()
        payload["seconds"] = time.perf_counter() - part_started
        combined["parts"][part] = payload
        if report is not None:
            report(part, result)
    combined["seconds"] = time.perf_counter() - started
    return combined


def _run_part(part: str, device: str, kwargs: dict[str, Any]) -> PartResult:
    """One part's result (see `Reporter`)."""
    if part == "pipeline":
        payload = results_to_dict(pipeline_benchmark(None, **kwargs))
        payload["settings"] = kwargs
        return payload
    if part == "train":
        return benchmark_training(device=device, **kwargs)
    if part == "heads":
        rows = benchmark_heads(None, device=device, **kwargs)
        return {"benchmark": "heads", "settings": kwargs, "rows": [row.to_dict() for row in rows]}
    return benchmark_head_cost(device=device, **kwargs)
