"""Face verification (docs/reference.md §3): cosine scores -> 10-fold accuracy, TAR@FAR, ROC.

Scores are cosine similarities of L2-normalized embeddings, so every threshold here is in
**cosine units** (a pair is declared "same" when ``score > threshold``); the squared L2
distance of unit vectors is ``2 - 2 cos``. Accuracies, TAR and FAR are fractions in [0, 1].

`verify` is the protocol on known scores; `evaluate_set` (embeddings -> scores -> `verify`)
is the one routine shared by `eqm eval`, training's per-epoch callback and the tests.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from eqmcli.atomic import json_safe
from eqmcli.errors import UserError
from eqmcli.evaluation.features import extract_embeddings
from eqmcli.evaluation.pair_sets import MissingImages, VerificationSet

#: FAR operating points reported as TAR@FAR (only where #negative pairs >= 1 / FAR).
FAR_TARGETS: tuple[float, ...] = (1e-3, 1e-4)
#: Most ROC points kept in the JSON result (for plotting).
MAX_ROC_POINTS = 500


def far_key(far: float) -> str:
    """The JSON key of a FAR operating point: 1e-3 -> "1e-03"."""
    return f"{far:.0e}"


@dataclass
class VerificationResult:
    """The outcome of the 10-fold protocol on one set of scored pairs.

    Accuracies, TAR, FAR and EER are fractions in [0, 1]; thresholds are cosine similarities.
    A statistic that the data cannot support (TAR@FAR with too few negative pairs, AUC/EER
    with a single class) is ``None``, never 0. With a single class (only matched or only
    mismatched pairs) accuracy is meaningless too (any threshold beyond the scores is
    "perfect"): accuracy, its std and the thresholds are None and ``warning`` says why.
    """

    pairs: int
    positives: int
    negatives: int
    folds: int
    accuracy: float | None
    accuracy_std: float | None
    threshold: float | None
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    auc: float | None
    eer: float | None
    eer_threshold: float | None
    tar_at_far: dict[str, float | None]
    tar_thresholds: dict[str, float | None]
    roc: dict[str, list[float]] = field(default_factory=dict)
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (plain floats/ints/lists; non-finite numbers become None)."""
        return json_safe(asdict(self))


# ----------------------------------------------------------------------------- folds
def fold_bounds(n: int, folds: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` blocks, no shuffle (the first ``n % folds`` get one more)."""
    base, extra = divmod(n, folds)
    bounds, start = [], 0
    for k in range(folds):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _fold_masks(n: int, folds: int, fold_of: np.ndarray | None) -> list[np.ndarray]:
    """One boolean test mask per fold: contiguous blocks, or the groups of ``fold_of``."""
    if fold_of is None:
        masks = []
        for start, stop in fold_bounds(n, folds):
            mask = np.zeros(n, dtype=bool)
            mask[start:stop] = True
            masks.append(mask)
        return masks
    labels = np.asarray(fold_of).reshape(-1)
    if labels.size != n:
        raise UserError(f"{labels.size} fold labels for {n} pairs: they must match")
    return [labels == value for value in np.unique(labels)]


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """The cosine threshold maximizing accuracy of ``score > t`` on these pairs, and that accuracy.

    Accuracy as a function of ``t`` is a step function that changes only at the scores:
    each candidate threshold stands for one interval between consecutive distinct scores
    (below the lowest, above the highest). The best intervals that touch form a plateau;
    the threshold returned is the **middle of the widest best plateau** (the lowest one
    when several are equally wide), so it does not hug one score. A plateau open towards
    -inf / +inf is closed 1.0 below the lowest / above the highest score. O(n log n).
    """
    unique = np.unique(scores)
    if unique.size == 0:
        return 0.0, 0.0
    # interval k (k = 0..U) of thresholds is [ends[k], ends[k + 1]) with U = unique.size
    ends = np.concatenate(([unique[0] - 1.0], unique, [unique[-1] + 1.0]))
    candidates = (ends[:-1] + ends[1:]) / 2.0  # one threshold inside each interval
    pos = np.sort(scores[issame])
    neg = np.sort(scores[~issame])
    true_accepts = pos.size - np.searchsorted(pos, candidates, side="right")  # pos > t
    true_rejects = np.searchsorted(neg, candidates, side="right")  # neg <= t
    correct = true_accepts + true_rejects
    is_best = np.r_[False, correct == correct.max(), False].astype(np.int8)
    first = np.flatnonzero(np.diff(is_best) == 1)  # first interval of each best plateau
    last = np.flatnonzero(np.diff(is_best) == -1) - 1  # its last interval
    low, high = ends[first], ends[last + 1]
    widest = int(np.argmax(high - low))
    return float((low[widest] + high[widest]) / 2.0), float(correct.max()) / scores.size


def accuracy_at(scores: np.ndarray, issame: np.ndarray, threshold: float) -> float:
    """Fraction of pairs classified correctly by ``score > threshold`` (cosine units)."""
    return float(np.mean((scores > threshold) == issame)) if scores.size else float("nan")


# ------------------------------------------------------------------------------- ROC
def roc_curve(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, thresholds) at every distinct score, accepting pairs with ``score >= t``.

    Starts at (0, 0) with threshold +inf and ends at (1, 1). Tied scores form one point.
    """
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    y = issame[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tar = np.r_[0.0, tp / n_pos]
    far = np.r_[0.0, fp / n_neg]
    thresholds = np.r_[np.inf, s[last_of_tie]]
    return far, tar, thresholds


def _downsample(far: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most ~`limit` ROC points: half spread evenly, half log-spaced in FAR."""
    n = far.size
    if n <= limit:
        return np.arange(n)
    even = np.linspace(0, n - 1, limit // 2).round().astype(int)
    positive = far[far > 0]
    low = positive.min() if positive.size else 1e-6
    targets = np.logspace(np.log10(low), 0.0, limit - limit // 2)
    logged = np.clip(np.searchsorted(far, targets, side="right") - 1, 0, n - 1)
    return np.unique(np.concatenate((even, logged, [0, n - 1])))


def _eer(far: np.ndarray, tar: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """Equal error rate (FAR = 1 - TAR), linearly interpolated between ROC points."""
    frr = 1.0 - tar
    diff = frr - far  # decreasing from 1 to -1 along the curve
    k = int(np.argmax(diff <= 0))
    if k == 0:
        return float(far[0]), float(thresholds[0])
    d0, d1 = diff[k - 1], diff[k]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    eer = far[k - 1] + w * (far[k] - far[k - 1])
    t0 = thresholds[k - 1] if np.isfinite(thresholds[k - 1]) else thresholds[k]
    return float(eer), float(t0 + w * (thresholds[k] - t0))


def operating_points(
    far: np.ndarray,
    tar: np.ndarray,
    thresholds: np.ndarray,
    negatives: int,
    targets: tuple[float, ...],
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """TAR at each target FAR, and its cosine threshold, keyed by `far_key`.

    The ROC point used is the last one whose FAR does not exceed the target (the highest
    TAR reachable without accepting more impostors than the target allows). A target
    below 1 / ``negatives`` cannot be measured: its TAR and threshold are None, never 0.
    """
    tars: dict[str, float | None] = {far_key(f): None for f in targets}
    cuts: dict[str, float | None] = {far_key(f): None for f in targets}
    for target in targets:
        if negatives * target < 1.0 - 1e-9:
            continue  # too few negatives to measure this FAR
        k = int(np.searchsorted(far, target, side="right")) - 1  # last point with FAR <= target
        tars[far_key(target)] = float(tar[k])
        cuts[far_key(target)] = float(thresholds[k]) if np.isfinite(thresholds[k]) else None
    return tars, cuts


# numpy >= 2 renamed trapz to trapezoid; support both (torch 2.3 wheels pin numpy 1.x)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def roc_auc(far: np.ndarray, tar: np.ndarray) -> float:
    """Area under the ROC (trapezoids over the exact ROC points of `roc_curve`)."""
    return float(_trapezoid(tar, far))


# ---------------------------------------------------------------------------- verify
def verify(
    scores: Any, issame: Any, folds: int = 10, fold_of: np.ndarray | None = None,
    unscored: np.ndarray | None = None,
) -> VerificationResult:
    """Run the verification protocol on cosine ``scores`` (P,) with ground truth ``issame`` (P,).

    Pairs are split into ``folds`` contiguous blocks (no shuffle). For each fold the
    threshold maximizing accuracy on the other folds is applied to it; the result holds
    the mean and population std of the fold accuracies, per-fold accuracies and
    thresholds (cosine units), their mean threshold, TAR at FAR 1e-3 / 1e-4 (only where
    the number of negative pairs is >= 1/FAR, else None), ROC AUC, EER and ROC points.
    ``fold_of`` (P,) assigns each pair to a fold explicitly (e.g. YouTube Faces' official
    splits); ``folds`` is then the number of distinct values in it. ``unscored`` (P,) marks
    pairs counted as failures (`VerificationSet.counted_wrong` put their scores at ±2): they
    take no part in choosing a threshold, which then stays inside (-2, 2), so they are
    wrong in every fold's accuracy.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(issame).astype(bool).reshape(-1)
    if s.shape != y.shape:
        raise UserError(f"{s.size} scores but {y.size} issame labels: they must match")
    test_sets = _fold_masks(s.size, folds, fold_of)
    folds = len(test_sets)
    if folds < 2 or s.size < folds:
        raise UserError(
            f"verification needs at least 2 folds and one pair per fold "
            f"({s.size} pairs, {folds} folds)"
        )
    if not np.all(np.isfinite(s)):
        raise UserError(
            "verification scores contain NaN or infinite values (did the model diverge?)"
        )

    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not (n_pos and n_neg):
        return _single_class_result(s.size, n_pos, n_neg, folds)
    fold_accuracies, fold_thresholds = [], []
    scored = np.ones(s.size, dtype=bool) if unscored is None else ~np.asarray(unscored)
    for test in test_sets:
        threshold, _ = best_threshold(s[~test & scored], y[~test & scored])
        fold_thresholds.append(threshold)
        fold_accuracies.append(accuracy_at(s[test], y[test], threshold))
    far, tar, thresholds = roc_curve(s, y)
    eer, eer_threshold = _eer(far, tar, thresholds)
    tar_at_far, tar_thresholds = operating_points(far, tar, thresholds, n_neg, FAR_TARGETS)
    return VerificationResult(
        pairs=int(s.size),
        positives=n_pos,
        negatives=n_neg,
        folds=folds,
        accuracy=float(np.mean(fold_accuracies)),
        accuracy_std=float(np.std(fold_accuracies)),
        threshold=float(np.mean(fold_thresholds)),
        fold_accuracies=[float(a) for a in fold_accuracies],
        fold_thresholds=[float(t) for t in fold_thresholds],
        auc=roc_auc(far, tar),
        eer=eer,
        eer_threshold=eer_threshold,
        tar_at_far=tar_at_far,
        tar_thresholds=tar_thresholds,
        roc=roc_points(far, tar, thresholds),
    )


def roc_points(
    far: np.ndarray, tar: np.ndarray, thresholds: np.ndarray, limit: int = MAX_ROC_POINTS
) -> dict[str, list[float]]:
    """At most ~``limit`` ROC points for a JSON file: ``{far, tar, threshold}`` lists
    (fractions; cosine thresholds, the +inf of the first point written as NaN -> null)."""
    keep = _downsample(far, limit)
    finite = np.where(np.isfinite(thresholds), thresholds, np.nan)
    return {
        "far": far[keep].tolist(),
        "tar": tar[keep].tolist(),
        "threshold": finite[keep].tolist(),
    }


def _single_class_result(
    pairs: int, positives: int, negatives: int, folds: int
) -> VerificationResult:
    """The result for pairs of one class only: nothing but the counts is defined."""
    only = "matched" if positives else "mismatched"
    return VerificationResult(
        pairs=pairs,
        positives=positives,
        negatives=negatives,
        folds=folds,
        accuracy=None,
        accuracy_std=None,
        threshold=None,
        fold_accuracies=[],
        fold_thresholds=[],
        auc=None,
        eer=None,
        eer_threshold=None,
        tar_at_far={far_key(f): None for f in FAR_TARGETS},
        tar_thresholds={far_key(f): None for f in FAR_TARGETS},
        roc={"far": [], "tar": [], "threshold": []},
        warning=(
            f"all {pairs} pairs are {only}: accuracy, AUC, EER and TAR@FAR need both matched "
            "and mismatched pairs, so none is reported"
        ),
    )


def pair_scores(embeddings: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of rows of L2-normalized ``embeddings``: float32 (P,).

    Computed in float32, the embeddings' own precision (float64 cost 1.6x the time for
    the same ranking): against a float64 computation the scores differ by at most a few
    float32 ulps (< 3e-8 for near-orthogonal 512-d pairs, < 2.5e-7 near cos 0.8).
    """
    index = torch.as_tensor(np.asarray(pairs, dtype=np.int64))
    features = embeddings.float()
    return (features[index[:, 0]] * features[index[:, 1]]).sum(dim=1).numpy()


#: The fields of `Provenance`.
PROVENANCE: tuple[str, ...] = (
    "source", "checkpoint", "checkpoint_sha256", "preprocessing", "epoch", "step",
)


@dataclass(kw_only=True)
class Provenance:
    """Where a result came from: filled in by the caller, left out of its JSON when unknown.

    ``checkpoint_sha256`` is the SHA-256 (hex) of the model file; ``preprocessing`` how its
    images were normalized (``color_order``, per-channel ``mean`` and ``std`` of
    ``(x / 255 - mean) / std``, and ``source``: recipe, ONNX metadata, flags or assumed).
    """

    source: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    preprocessing: dict[str, Any] | None = None
    epoch: int | None = None
    step: int | None = None

    def provenance(self) -> dict[str, Any]:
        """The provenance fields that are known, for ``to_dict``."""
        known = {key: getattr(self, key) for key in PROVENANCE}
        return {key: value for key, value in known.items() if value is not None}


@dataclass
class SetEvaluation(Provenance):
    """One verification set scored by one model: the protocol's results and how they were made.

    ``result`` is computed on the flip-fused embeddings when ``flip`` (else the plain
    ones), ``noflip`` on the plain embeddings when ``flip`` is on (else None).
    ``input_size`` and ``resized_from`` are (H, W) pixels (``resized_from`` is the images'
    own size when they were resized to the model's input, else None); ``seconds`` is the
    wall time of embedding and scoring. The provenance fields are filled in by the caller.
    ``scores`` and ``issame`` are the per-pair cosines that ``result`` thresholded and their
    ground truth (not in ``to_dict``; `eqmcli.evaluation.pair_outcomes` saves them for paired
    tests);
    ``pairs_fingerprint`` is the set's `VerificationSet.fingerprint` (None: unknown);
    ``fold_of`` the pairs' folds when not contiguous blocks, ``missing`` what was done with
    pairs naming a missing image, ``unscored`` the pairs counted as failures for it and
    ``pair_names`` each pair's two image names (for the failures list), all from the
    `VerificationSet`.
    """

    benchmark: str
    result: VerificationResult
    noflip: VerificationResult | None
    flip: bool
    images: int
    input_size: tuple[int, int]
    resized_from: tuple[int, int] | None
    seconds: float
    scores: np.ndarray | None = field(default=None, repr=False, compare=False)
    issame: np.ndarray | None = field(default=None, repr=False, compare=False)
    pairs_fingerprint: str | None = None
    fold_of: np.ndarray | None = field(default=None, repr=False, compare=False)
    missing: MissingImages | None = None
    pair_names: np.ndarray | None = field(default=None, repr=False, compare=False)
    unscored: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def accuracy(self) -> float:
        """Mean 10-fold accuracy (fraction) of the reported (flip-test when on) embeddings."""
        return self.result.accuracy

    def to_dict(self, *, roc: bool = True) -> dict[str, Any]:
        """The ``eval/<benchmark>.json`` layout (JSON-safe); ``roc=False`` leaves the points out."""
        out: dict[str, Any] = {"benchmark": self.benchmark, "flip": self.flip}
        out.update(self.result.to_dict())
        if not roc:
            out.pop("roc")
        if self.noflip is not None:
            out["accuracy_noflip"] = self.noflip.accuracy
            out["accuracy_noflip_std"] = self.noflip.accuracy_std
            out["threshold_noflip"] = self.noflip.threshold
        out["images"] = self.images
        out["input_size"] = list(self.input_size)
        out["resized_from"] = list(self.resized_from) if self.resized_from else None
        out["seconds"] = round(self.seconds, 3)
        if self.pairs_fingerprint is not None:
            out["pairs_fingerprint"] = self.pairs_fingerprint
        if self.missing is not None:
            out["missing"] = self.missing.to_dict()
        out.update(self.provenance())
        return json_safe(out)


def evaluate_set(
    backbone: nn.Module,
    vset: VerificationSet,
    *,
    device: str | torch.device,
    input_size: tuple[int, int],
    flip: bool = True,
    batch_size: int = 256,
    precision: str = "auto",
    progress: bool = True,
) -> SetEvaluation:
    """Embed ``vset``'s images (`extract_embeddings`) and run `verify` on its pairs.

    With ``flip`` the reported result uses flip-fused embeddings and ``noflip`` the plain
    ones; ``input_size`` is the model's (H, W) input in pixels.
    """
    started = time.perf_counter()
    emb = extract_embeddings(
        backbone,
        vset.images,
        batch_size=batch_size,
        device=device,
        input_size=input_size,
        flip=flip,
        precision=precision,
        progress=progress,
        description=f"embedding {vset.name}",
    )
    main = emb.flip if flip and emb.flip is not None else emb.plain
    scores = vset.counted_wrong(pair_scores(main, vset.pairs))
    protocol = {"folds": vset.folds, "fold_of": vset.fold_of, "unscored": vset.unscored}
    result = verify(scores, vset.issame, **protocol)
    noflip = (
        verify(vset.counted_wrong(pair_scores(emb.plain, vset.pairs)), vset.issame, **protocol)
        if flip else None
    )
    return SetEvaluation(
        benchmark=vset.name,
        result=result,
        noflip=noflip,
        flip=bool(flip),
        images=int(emb.plain.shape[0]),
        input_size=(int(input_size[0]), int(input_size[1])),
        resized_from=emb.resized_from,
        seconds=time.perf_counter() - started,
        scores=scores,
        issame=np.asarray(vset.issame, dtype=bool),
        pairs_fingerprint=vset.fingerprint,
        fold_of=vset.fold_of,
        missing=vset.missing,
        pair_names=vset.image_names(),
        unscored=vset.unscored,
    )
