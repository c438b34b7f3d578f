"""MegaFace challenge 1: rank-1 identification among 10 ... 1M distractors, TAR at FAR 1e-6.

Identification, as the devkit's ``FuseResults`` counts it: for each FaceScrub identity and
each ordered pair (g, p) of two of its images, g is put into the gallery with the
distractors and p is searched; the search is correct at rank 1 when score(p, g) is at
least p's best distractor score. Rank-1 is the fraction of correct (g, p) pairs.

Verification (the challenge's ROC): genuine pairs are all pairs of FaceScrub images of one
identity; impostor pairs are every probe image against every distractor. TAR at FAR 1e-6
uses the lowest threshold admitting at most 1e-6 x impostors (None when there are fewer
than 1e6 impostor pairs).

Scores are cosines of L2-normalized features. The search runs over the union of the
distractor lists in chunks, keeping per size only each probe's best score and the few
highest impostor scores: no probe x distractor matrix is ever held whole.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqmcli.atomic import json_safe
from eqmcli.data.align import Template, template_for_input
from eqmcli.evaluation.feature_cache import Embedder, FeatureCache, files_fingerprint, fingerprint
from eqmcli.evaluation.megaface.files import MegafaceImages, MegafaceLists, read_feature_files
from eqmcli.evaluation.verification import PROVENANCE, Provenance

MEGAFACE_SIZES: tuple[int, ...] = (10, 100, 1000, 10000, 100000, 1000000)
VERIFICATION_FAR = 1e-6
#: Distractors scored per chunk (a (probes, chunk) float32 block).
DISTRACTOR_CHUNK = 1 << 14


@dataclass
class DistractorScores:
    """Per size: each probe's best distractor score (P,) and the highest impostor scores."""

    best: dict[int, np.ndarray]
    top_impostors: dict[int, np.ndarray]
    impostors: dict[int, int]


def _columns(mask: np.ndarray) -> slice | np.ndarray | None:
    """A slice when ``mask`` is all True or a True prefix, else the mask; None if all False."""
    count = int(mask.sum())
    if count == 0:
        return None
    if mask[:count].all():
        return slice(0, count)
    return torch.from_numpy(np.flatnonzero(mask))


def _merge_top(pool: torch.Tensor, scores: torch.Tensor, keep: int, floor: float) -> torch.Tensor:
    """The ``keep`` highest of ``pool`` and ``scores``, best first. Only scores above
    ``floor`` (the pool's lowest once full) can enter, so a full pool costs one comparison
    per score; an unfilled one takes the block's own top ``keep`` first (no big copy)."""
    if np.isfinite(floor):
        fresh = scores[scores > floor]
    else:
        flat = scores.reshape(-1)
        fresh = torch.topk(flat, min(keep, flat.numel())).values
    merged = torch.cat((pool, fresh))
    return torch.topk(merged, min(keep, merged.numel())).values


def distractor_scores(
    probes: np.ndarray,
    distractors: np.ndarray,
    members: dict[int, np.ndarray],
    far: float = VERIFICATION_FAR,
    chunk: int = DISTRACTOR_CHUNK,
) -> DistractorScores:
    """Chunked probe x distractor search. ``members[size]`` (D,) marks the distractors of
    each size; ``distractors`` may be a memory map (read one chunk at a time)."""
    queries = torch.from_numpy(np.ascontiguousarray(probes, dtype=np.float32))
    n_probes = queries.shape[0]
    counts = {size: int(mask.sum()) for size, mask in members.items()}
    impostors = {size: n_probes * counts[size] for size in members}
    keep = {size: int(np.floor(far * impostors[size] + 1e-9)) + 1 for size in members}
    best = {size: torch.full((n_probes,), -np.inf) for size in members}
    pools = {size: torch.empty(0) for size in members}
    floors = {size: -np.inf for size in members}
    for start in range(0, distractors.shape[0], chunk):
        block_np = np.ascontiguousarray(distractors[start : start + chunk], dtype=np.float32)
        block = queries @ torch.from_numpy(block_np).T
        for size, mask in members.items():
            cols = _columns(mask[start : start + len(block_np)])
            if cols is None:
                continue
            sub = block[:, cols]
            best[size] = torch.maximum(best[size], sub.max(dim=1).values)
            if impostors[size] * far < 1.0 - 1e-9:
                continue  # FAR 1e-6 cannot be measured at this size
            pools[size] = _merge_top(pools[size], sub, keep[size], floors[size])
            if pools[size].numel() == keep[size]:
                floors[size] = float(pools[size][-1])
    return DistractorScores(
        best={s: v.numpy() for s, v in best.items()},
        top_impostors={s: v.numpy() for s, v in pools.items()},
        impostors=impostors,
    )


def identity_pairs(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair (g, p), g != p, of probe images of one identity: two (M,) arrays."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(ids):
        groups.setdefault(name, []).append(index)
    gallery, probe = [], []
    for rows in groups.values():
        for g in rows:
            for p in rows:
                if g != p:
                    gallery.append(g)
                    probe.append(p)
    return np.asarray(gallery, dtype=np.int64), np.asarray(probe, dtype=np.int64)


@dataclass
class MegafaceResult(Provenance):
    """MegaFace challenge 1 results per distractor count; fractions in [0, 1]."""

    probes: int
    identities: int
    probe_pairs: int
    distractors: dict[str, int]
    rank1: dict[str, float]
    tar_at_far_1e6: dict[str, float | None]
    far_thresholds: dict[str, float | None]
    features: str
    seconds: float
    missing: list[str] = field(default_factory=list)
    flip: bool | None = None
    input_size: tuple[int, int] | None = None
    resized_from: tuple[int, int] | None = None
    benchmark: str = "megaface"

    def to_dict(self) -> dict[str, Any]:
        """The ``eval/megaface.json`` layout (the listed images that were missing, as
        ``missing_images``, counted)."""
        out = {key: value for key, value in asdict(self).items() if key not in PROVENANCE}
        out["missing_images"] = len(out.pop("missing"))
        out.update(self.provenance())
        return json_safe(out)


def megaface_numbers(
    probe_features: np.ndarray,
    probe_ids: list[str],
    distractor_features: np.ndarray,
    members: dict[int, np.ndarray],
    far: float = VERIFICATION_FAR,
) -> dict[str, Any]:
    """Rank-1 and TAR at FAR ``far`` (1e-6) per size (see the module docstring), as result
    fields."""
    started = time.perf_counter()
    probes = np.ascontiguousarray(probe_features, dtype=np.float32)
    found = distractor_scores(probes, distractor_features, members, far=far)
    gallery, probe = identity_pairs(probe_ids)
    genuine = np.sum(probes[gallery] * probes[probe], axis=1)
    upper = gallery < probe  # each unordered genuine pair once for the ROC
    rank1, tar, cuts = {}, {}, {}
    for size in sorted(members):
        key = str(size)
        rank1[key] = float(np.mean(genuine >= found.best[size][probe])) if genuine.size else 0.0
        pool = found.top_impostors[size]
        allowed = int(np.floor(far * found.impostors[size] + 1e-9))
        if found.impostors[size] * far < 1.0 - 1e-9 or not upper.any():
            tar[key] = cuts[key] = None
            continue
        bar = float(pool[allowed]) if allowed < pool.size else -np.inf
        tar[key] = float(np.mean(genuine[upper] > bar))
        cuts[key] = bar if np.isfinite(bar) else None
    return {
        "probes": int(len(probes)),
        "identities": len(set(probe_ids)),
        "probe_pairs": int(len(gallery)),
        "distractors": {str(s): int(m.sum()) for s, m in sorted(members.items())},
        "rank1": rank1,
        "tar_at_far_1e6": tar,
        "far_thresholds": cuts,
        "seconds": time.perf_counter() - started,
    }


def distractor_union(lists: dict[int, list[str]]) -> tuple[list[str], dict[int, np.ndarray]]:
    """Every distractor once, smallest list first (nested lists become prefixes), and a
    membership mask (union length) per size."""
    order: list[str] = []
    index: dict[str, int] = {}
    for size in sorted(lists):
        for path in lists[size]:
            if path not in index:
                index[path] = len(order)
                order.append(path)
    members = {}
    for size, paths in lists.items():
        mask = np.zeros(len(order), dtype=bool)
        mask[[index[p] for p in paths]] = True
        members[size] = mask
    return order, members


def _unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


@dataclass
class PrecomputedFeatures:
    """Devkit feature files: ``folder/facescrub/<path><suffix>``, ``folder/megaface/...``."""

    folder: Path
    suffix: str
    cache: FeatureCache


def _precomputed(source: PrecomputedFeatures, kind: str, names: list[str]) -> np.ndarray:
    files = [source.folder / kind / f"{name}{source.suffix}" for name in names]
    key = fingerprint(kind, source.suffix, files_fingerprint(files))
    found = source.cache.load(f"megaface-{kind}", key)
    if found is not None and found.shape[0] == len(names):
        return found
    features = read_feature_files(source.folder / kind, names, source.suffix)
    source.cache.save(f"megaface-{kind}", key, features)
    return features


def _preparation(template: Template, images: list[Path]) -> dict[str, str]:
    """What else decides the features of ``images`` (for the cache key): the alignment
    template and each image's ``<image>.json`` (landmarks or box) as it is on disk."""
    sidecars = [image.with_name(image.name + ".json") for image in images]
    return {"template": template.name, "sidecars": files_fingerprint(sidecars)}


def _present(folder: Path, names: list[str]) -> np.ndarray:
    """Which listed images exist under ``folder``."""
    return np.asarray([(folder / name).is_file() for name in names], dtype=bool)


def _embedded(
    lists: MegafaceLists,
    union: list[str],
    members: dict[int, np.ndarray],
    embedder: Embedder,
) -> tuple[np.ndarray, list[str], np.ndarray, dict[int, np.ndarray], list[str]]:
    """From the images that exist: probe features and identities, distractor features and
    memberships (all L2-normalized), and the listed images that are missing."""
    template = template_for_input(embedder.input_size)
    probe_ok = _present(lists.probe_images, lists.probe_paths)
    union_ok = _present(lists.distractor_images, union)
    probe_paths = [p for p, ok in zip(lists.probe_paths, probe_ok, strict=True) if ok]
    probe_ids = [i for i, ok in zip(lists.probe_ids, probe_ok, strict=True) if ok]
    kept_union = [p for p, ok in zip(union, union_ok, strict=True) if ok]
    missing = [f"facescrub_images/{p}" for p, ok in zip(lists.probe_paths, probe_ok, strict=True)
               if not ok]
    missing += [f"megaface_images/{p}" for p, ok in zip(union, union_ok, strict=True) if not ok]
    probe_files = [lists.probe_images / p for p in probe_paths]
    distractor_files = [lists.distractor_images / p for p in kept_union]
    probes = embedder.features(
        "megaface-facescrub", MegafaceImages(probe_files, template), probe_files,
        settings=_preparation(template, probe_files),
    )
    distractors = embedder.features(
        "megaface-distractors", MegafaceImages(distractor_files, template), distractor_files,
        settings=_preparation(template, distractor_files),
    )
    kept_members = {size: mask[union_ok] for size, mask in members.items()}
    return probes, probe_ids, distractors, kept_members, missing


def evaluate_megaface(
    lists: MegafaceLists,
    embedder: Embedder | None = None,
    precomputed: PrecomputedFeatures | None = None,
) -> MegafaceResult:
    """MegaFace challenge 1 with features from ``embedder`` (the listed images that exist;
    the others are listed in ``missing``) or from ``precomputed`` feature files."""
    started = time.perf_counter()
    union, members = distractor_union(lists.distractors)
    missing: list[str] = []
    probe_ids = lists.probe_ids
    if precomputed is not None:
        probes = _unit_rows(_precomputed(precomputed, "facescrub", lists.probe_paths))
        distractors = _unit_rows(_precomputed(precomputed, "megaface", union))
        source = f"features in {precomputed.folder} (*{precomputed.suffix})"
    elif embedder is not None:
        probes, probe_ids, distractors, members, missing = _embedded(
            lists, union, members, embedder
        )
        source = str(lists.root)
    else:
        raise ValueError("evaluate_megaface needs an embedder or precomputed features")
    numbers = megaface_numbers(probes, probe_ids, distractors, members)
    numbers["seconds"] = time.perf_counter() - started
    return MegafaceResult(
        features="precomputed" if precomputed is not None else "embedded",
        missing=missing,
        flip=embedder.flip if embedder is not None else None,
        input_size=embedder.input_size if embedder is not None else None,
        resized_from=embedder.resized_from if embedder is not None else None,
        source=source,
        **numbers,
    )
