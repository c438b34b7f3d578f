"""`eqm bench protocols`: time and peak memory of IJB-C scoring and MegaFace search at scale.

Both run on random features (seeded), so they measure the protocol code, not a model:

- IJB-C 1:1 after embedding: template aggregation (`eqmcli.evaluation.templates`), scoring
  of every template pair, the exact ROC with TAR at FAR 1e-6 ... 1e-1, AUC and the
  InsightFace nearest-point TAR. Sizes of IJB-C: 469,375 images, 23,124 templates,
  15,658,489 template pairs (19,557 genuine), d = 512; media hold 3 images on average.
- MegaFace challenge 1 search: 3,530 probe images x 1,000,000 distractors (d = 512),
  rank-1 and TAR at FAR 1e-6 for the six nested distractor sets
  (`eqmcli.evaluation.megaface.protocol.megaface_numbers`).

``scale`` shrinks every count (e.g. 0.01) for a quick run. The peak is the memory above
the level after the inputs were made (`eqmcli.bench.memory.peak_memory`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from eqmcli.bench.memory import peak_memory
from eqmcli.evaluation.ijb.protocol import IJB_FAR_TARGETS, nearest_point_tar
from eqmcli.evaluation.megaface.protocol import MEGAFACE_SIZES, megaface_numbers
from eqmcli.evaluation.templates import score_pairs, template_features
from eqmcli.evaluation.verification import operating_points, roc_auc, roc_curve

IJBC_IMAGES, IJBC_TEMPLATES, IJBC_PAIRS, IJBC_GENUINE = 469_375, 23_124, 15_658_489, 19_557
MEGAFACE_PROBES, MEGAFACE_IDENTITIES, MEGAFACE_DISTRACTORS = 3_530, 80, 1_000_000


@dataclass
class ProtocolBench:
    """One timed run: wall and CPU seconds (all threads), peak extra memory in bytes."""

    benchmark: str
    sizes: dict[str, int]
    dim: int
    threads: int
    seconds: float
    cpu_seconds: float
    peak_extra_bytes: int | None
    peak_method: str
    parts: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def random_unit_rows(rows: int, dim: int, generator: torch.Generator) -> np.ndarray:
    """(rows, dim) float32 Gaussian rows, made a block at a time (no float64 copy)."""
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 1 << 16):
        block = torch.randn(min(1 << 16, rows - start), dim, generator=generator)
        out[start : start + len(block)] = torch.nn.functional.normalize(block, dim=1).numpy()
    return out


def _ijb_inputs(scale: float, dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = max(int(IJBC_IMAGES * scale), 10)
    templates = max(int(IJBC_TEMPLATES * scale), 4)
    pairs = max(int(IJBC_PAIRS * scale), 10)
    template_of = np.sort(rng.integers(0, templates, images))
    template_of[:templates] = np.arange(templates)  # every template has an image
    media_of = template_of * 1000 + rng.integers(0, 7, images)  # ~3 images per media
    first = rng.integers(0, templates, pairs)
    second = rng.integers(0, templates, pairs)
    same = np.zeros(pairs, dtype=bool)
    same[: max(int(IJBC_GENUINE * scale), 1)] = True
    return {
        "features": random_unit_rows(images, dim, torch.Generator().manual_seed(seed)),
        "templates": template_of, "medias": media_of, "weights": rng.uniform(0.5, 1, images),
        "first": first, "second": second, "same": same,
    }


def _timed(
    benchmark: str, sizes: dict[str, int], dim: int, work: Callable[[dict[str, float]], None]
) -> ProtocolBench:
    """Run ``work(parts)`` (it records named part seconds into ``parts``) under the clocks
    and the peak-memory probe."""
    parts: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    with peak_memory(torch.device("cpu")) as peak:
        work(parts)
    return ProtocolBench(
        benchmark=benchmark,
        sizes=sizes,
        dim=dim,
        threads=torch.get_num_threads(),
        seconds=time.perf_counter() - wall,
        cpu_seconds=time.process_time() - cpu,
        peak_extra_bytes=peak.extra_bytes,
        peak_method=peak.method,
        parts=parts,
    )


def benchmark_ijb_scale(scale: float = 1.0, dim: int = 512, seed: int = 0) -> ProtocolBench:
    """Template aggregation + scoring + TAR/AUC of an IJB-C-sized problem (random features)."""
    data = _ijb_inputs(scale, dim, seed)

    def work(parts: dict[str, float]) -> None:
        mark = time.perf_counter()
        tf = template_features(data["features"], data["templates"], data["medias"], data["weights"])
        parts["templates"] = time.perf_counter() - mark
        mark = time.perf_counter()
        scores = score_pairs(tf, data["first"], data["second"])
        parts["pair scores"] = time.perf_counter() - mark
        mark = time.perf_counter()
        far, tar, thresholds = roc_curve(scores.astype(np.float64), data["same"])
        negatives = int((~data["same"]).sum())
        operating_points(far, tar, thresholds, negatives, IJB_FAR_TARGETS)
        roc_auc(far, tar)
        nearest_point_tar(far, tar, int(data["same"].sum()), negatives)
        parts["ROC, TAR@FAR, AUC"] = time.perf_counter() - mark

    sizes = {
        "images": len(data["features"]),
        "templates": len(np.unique(data["templates"])),
        "pairs": len(data["first"]),
    }
    return _timed("ijbc-1to1", sizes, dim, work)


def benchmark_megaface_scale(scale: float = 1.0, dim: int = 512, seed: int = 0) -> ProtocolBench:
    """Rank-1 + TAR@FAR 1e-6 search of MegaFace-sized features (random, nested sizes)."""
    generator = torch.Generator().manual_seed(seed)
    probes = max(int(MEGAFACE_PROBES * scale), 4)
    distractors = max(int(MEGAFACE_DISTRACTORS * scale), 10)
    probe_features = random_unit_rows(probes, dim, generator)
    distractor_features = random_unit_rows(distractors, dim, generator)
    ids = [f"id{k % MEGAFACE_IDENTITIES}" for k in range(probes)]
    index = np.arange(distractors)
    members = {size: index < size for size in MEGAFACE_SIZES if size <= distractors}

    def work(parts: dict[str, float]) -> None:
        megaface_numbers(probe_features, ids, distractor_features, members)

    sizes = {"probes": probes, "distractors": distractors, "sets": len(members)}
    return _timed("megaface-search", sizes, dim, work)
