"""IJB-B / IJB-C: 1:1 template verification (TAR at FAR 1e-6 ... 1e-1, AUC) and 1:N search.

Each listed image is aligned by its 5 landmarks (`eqmcli.data.align`), embedded with flip
fusion (f(x) + f(flip x)), optionally kept unnormalized (``feature_norm``: its norm weighs
it) and multiplied by its detector score (``detector_score``); both default to on, as in
InsightFace's ``ijb_11.py`` (TestMode N1, D1, F2). Features become template features
(`eqmcli.evaluation.templates`) and template pairs are scored by cosine.

TAR at each FAR is read from the exact ROC (`eqmcli.evaluation.verification.roc_curve`): the highest
TAR among ROC points whose FAR does not exceed the target (None when there are fewer than
1/FAR impostor pairs). InsightFace's table instead takes the point of scikit-learn's
thinned ROC whose FAR is *nearest* the target (possibly above it); that number is kept as
``tar_at_far_nearest`` for comparison.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eqmcli.atomic import json_safe
from eqmcli.data.align import AlignedImages, template_for_input
from eqmcli.evaluation.feature_cache import Embedder, array_fingerprint
from eqmcli.evaluation.ijb.files import IjbSet
from eqmcli.evaluation.search import IdentificationResult, identification
from eqmcli.evaluation.templates import TemplateFeatures, score_pairs, template_features
from eqmcli.evaluation.verification import (
    PROVENANCE,
    Provenance,
    far_key,
    operating_points,
    roc_auc,
    roc_curve,
    roc_points,
)

IJB_FAR_TARGETS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class IjbOptions:
    """How image features enter templates (defaults: InsightFace's ``ijb_11.py``)."""

    detector_score: bool = True
    feature_norm: bool = True


@dataclass
class IjbResult(Provenance):
    """IJB 1:1 (and, when its lists exist, 1:N) results; fractions in [0, 1]."""

    benchmark: str
    images: int
    missing: list[str]
    templates: int
    pairs: int
    pairs_without_images: int
    positives: int
    negatives: int
    tar_at_far: dict[str, float | None]
    tar_thresholds: dict[str, float | None]
    tar_at_far_nearest: dict[str, float | None]
    auc: float | None
    roc: dict[str, list[float]]
    identification: list[IdentificationResult]
    flip: bool
    detector_score: bool
    feature_norm: bool
    alignment: str
    input_size: tuple[int, int]
    resized_from: tuple[int, int] | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The ``eval/<benchmark>.json`` layout (the listed images that were missing, as
        ``missing_images``, counted)."""
        out = {key: value for key, value in asdict(self).items() if key not in PROVENANCE}
        out["missing_images"] = len(out.pop("missing"))
        out["identification_mean"] = mean_identification(self.identification)
        out.update(self.provenance())
        return json_safe(out)


def mean_identification(results: list[IdentificationResult]) -> dict[str, Any] | None:
    """CMC and TPIR averaged over the galleries (the usual IJB-C report), or None."""
    if not results:
        return None

    def mean(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else float(np.mean(values))

    first = results[0]
    return {
        "cmc": {k: mean([r.cmc[k] for r in results]) for k in first.cmc},
        "tpir_at_fpir": {k: mean([r.tpir_at_fpir[k] for r in results]) for k in first.tpir_at_fpir},
    }


def nearest_point_tar(
    far: np.ndarray, tar: np.ndarray, positives: int, negatives: int
) -> dict[str, float | None]:
    """InsightFace's IJB table rule on an exact ROC from `roc_curve`: thin it as
    scikit-learn's ``roc_curve(drop_intermediate=True)`` does (drop points collinear with
    their neighbours, judged on the integer accept counts), then take the TAR of the point
    whose FAR is nearest each target (ties: the higher FAR, as InsightFace scans the curve
    from FAR 1 down)."""
    false_accepts = np.rint(far[1:] * negatives)  # without the (0, 0) origin, as scikit-learn
    true_accepts = np.rint(tar[1:] * positives)
    keep = np.ones(false_accepts.size, dtype=bool)
    if false_accepts.size > 2:
        keep[1:-1] = np.logical_or(np.diff(false_accepts, 2), np.diff(true_accepts, 2))
    thinned_far = np.r_[0.0, far[1:][keep]][::-1]
    thinned_tar = np.r_[0.0, tar[1:][keep]][::-1]
    return {
        far_key(f): float(thinned_tar[int(np.argmin(np.abs(thinned_far - f)))])
        for f in IJB_FAR_TARGETS
    }


def image_features(meta: IjbSet, embedder: Embedder, options: IjbOptions) -> tuple[
    np.ndarray, np.ndarray, list[str]
]:
    """Features of the images that exist (rows of ``present``), and the missing names."""
    paths = [meta.image_folder / name for name in meta.image_names]
    present = np.asarray([p.is_file() for p in paths], dtype=bool)
    missing = [n for n, ok in zip(meta.image_names, present, strict=True) if not ok]
    template = template_for_input(embedder.input_size)
    kept = np.flatnonzero(present)
    kept_paths = [paths[i] for i in kept]
    dataset = AlignedImages(kept_paths, meta.landmarks[kept], template)
    feats = embedder.features(
        meta.name,
        dataset,
        kept_paths,
        raw=options.feature_norm,
        settings={"template": template.name, "landmarks": array_fingerprint(meta.landmarks)},
    )
    if not options.feature_norm:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return feats, kept, missing


def verification_part(
    meta: IjbSet, templates: TemplateFeatures
) -> tuple[dict[str, Any], int]:
    """Score the template pairs whose templates have images; the 1:1 numbers and the
    number of pairs dropped for lack of images."""
    known = np.isin(meta.pair_first, templates.ids) & np.isin(meta.pair_second, templates.ids)
    same = meta.pair_same[known]
    scores = score_pairs(templates, meta.pair_first[known], meta.pair_second[known])
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    numbers: dict[str, Any] = {
        "pairs": int(known.sum()),
        "positives": n_pos,
        "negatives": n_neg,
        "tar_at_far": {far_key(f): None for f in IJB_FAR_TARGETS},
        "tar_thresholds": {far_key(f): None for f in IJB_FAR_TARGETS},
        "tar_at_far_nearest": {far_key(f): None for f in IJB_FAR_TARGETS},
        "auc": None,
        "roc": {"far": [], "tar": [], "threshold": []},
    }
    if n_pos and n_neg:
        far, tar, thresholds = roc_curve(scores.astype(np.float64), same)
        numbers["tar_at_far"], numbers["tar_thresholds"] = operating_points(
            far, tar, thresholds, n_neg, IJB_FAR_TARGETS
        )
        numbers["auc"] = roc_auc(far, tar)
        numbers["tar_at_far_nearest"] = nearest_point_tar(far, tar, n_pos, n_neg)
        numbers["roc"] = roc_points(far, tar, thresholds)
    return numbers, int((~known).sum())


def identification_part(meta: IjbSet, templates: TemplateFeatures) -> list[IdentificationResult]:
    """1:N on each gallery with the mixed probes (templates without images are left out)."""
    if meta.probes is None:
        return []
    probes = meta.probes
    probe_rows = np.isin(probes.templates, templates.ids)
    probe_feats = templates.features[templates.rows(probes.templates[probe_rows])]
    results = []
    for gallery in meta.galleries:
        rows = np.isin(gallery.templates, templates.ids)
        gallery_feats = templates.features[templates.rows(gallery.templates[rows])]
        results.append(
            identification(
                gallery.name,
                probe_feats,
                probes.subjects[probe_rows],
                gallery_feats,
                gallery.subjects[rows],
            )
        )
    return results


def evaluate_ijb(meta: IjbSet, embedder: Embedder, options: IjbOptions) -> IjbResult:
    """IJB-B or IJB-C with one model: embed (or read the cache), aggregate, score, search."""
    started = time.perf_counter()
    feats, kept, missing = image_features(meta, embedder, options)
    weights = meta.detector_scores[kept] if options.detector_score else None
    templates = template_features(feats, meta.templates[kept], meta.medias[kept], weights)
    numbers, dropped = verification_part(meta, templates)
    return IjbResult(
        benchmark=meta.name,
        images=int(len(kept)),
        missing=missing,
        templates=int(len(templates.ids)),
        pairs_without_images=dropped,
        identification=identification_part(meta, templates),
        flip=embedder.flip,
        detector_score=options.detector_score,
        feature_norm=options.feature_norm,
        alignment=template_for_input(embedder.input_size).name,
        input_size=tuple(embedder.input_size),  # type: ignore[arg-type]
        resized_from=embedder.resized_from,
        seconds=time.perf_counter() - started,
        source=str(Path(meta.root)),
        **numbers,
    )
