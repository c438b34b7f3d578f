"""The face-verification protocol (DESIGN §5): cosine scores -> 10-fold accuracy, TAR@FAR, ROC.

Scores are cosine similarities of L2-normalized embeddings, so every threshold here is in
**cosine units** (a pair is declared "same" when ``score > threshold``); the squared L2
distance of unit vectors is ``2 - 2 cos``. Accuracies, TAR and FAR are fractions in [0, 1].

`verify` is the protocol on known scores; `evaluate_set` (embeddings -> scores -> `verify`)
is the one routine shared by `eqm eval`, training's per-epoch callback and the tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from eqmcli.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from eqmcli.data.verification import VerificationSet

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
    with a single class) is ``None``, never 0.
    """

    pairs: int
    positives: int
    negatives: int
    folds: int
    accuracy: float
    accuracy_std: float
    threshold: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    auc: float | None
    eer: float | None
    eer_threshold: float | None
    tar_at_far: dict[str, float | None]
    tar_thresholds: dict[str, float | None]
    roc: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (plain floats/ints/lists; non-finite numbers become None)."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


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


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """The cosine threshold maximizing accuracy of ``score > t`` on these pairs, and that accuracy.

    Candidates are the midpoints between consecutive sorted unique scores plus one below
    the minimum and one above the maximum (all-same / all-different). Ties go to the
    smallest threshold. Vectorized: O(n log n).
    """
    unique = np.unique(scores)
    if unique.size == 0:
        return 0.0, 0.0
    candidates = np.concatenate(
        ([unique[0] - 1.0], (unique[:-1] + unique[1:]) / 2.0, [unique[-1] + 1.0])
    )
    pos = np.sort(scores[issame])
    neg = np.sort(scores[~issame])
    true_accepts = pos.size - np.searchsorted(pos, candidates, side="right")  # pos > t
    true_rejects = np.searchsorted(neg, candidates, side="right")  # neg <= t
    correct = true_accepts + true_rejects
    best = int(np.argmax(correct))
    return float(candidates[best]), float(correct[best]) / scores.size


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


# numpy >= 2 renamed trapz to trapezoid; support both (torch 2.3 wheels pin numpy 1.x)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


# ---------------------------------------------------------------------------- verify
def verify(scores: Any, issame: Any, folds: int = 10) -> VerificationResult:
    """Run the verification protocol on cosine ``scores`` (P,) with ground truth ``issame`` (P,).

    Pairs are split into ``folds`` contiguous blocks (no shuffle). For each fold the
    threshold maximizing accuracy on the other folds is applied to it; the result holds
    the mean and population std of the fold accuracies, per-fold accuracies and
    thresholds (cosine units), their mean threshold, TAR at FAR 1e-3 / 1e-4 (only where
    the number of negative pairs is >= 1/FAR, else None), ROC AUC, EER and ROC points.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(issame).astype(bool).reshape(-1)
    if s.shape != y.shape:
        raise UserError(f"{s.size} scores but {y.size} issame labels: they must match")
    if folds < 2 or s.size < folds:
        raise UserError(
            f"verification needs at least 2 folds and one pair per fold "
            f"({s.size} pairs, {folds} folds)"
        )
    if not np.all(np.isfinite(s)):
        raise UserError(
            "verification scores contain NaN or infinite values (did the model diverge?)"
        )

    fold_accuracies, fold_thresholds = [], []
    for start, stop in fold_bounds(s.size, folds):
        train = np.ones(s.size, dtype=bool)
        train[start:stop] = False
        threshold, _ = best_threshold(s[train], y[train])
        fold_thresholds.append(threshold)
        fold_accuracies.append(accuracy_at(s[start:stop], y[start:stop], threshold))

    n_pos, n_neg = int(y.sum()), int((~y).sum())
    auc = eer = eer_threshold = None
    tar_at_far: dict[str, float | None] = {far_key(f): None for f in FAR_TARGETS}
    tar_thresholds: dict[str, float | None] = {far_key(f): None for f in FAR_TARGETS}
    roc: dict[str, list[float]] = {"far": [], "tar": [], "threshold": []}
    if n_pos and n_neg:
        far, tar, thresholds = roc_curve(s, y)
        auc = float(_trapezoid(tar, far))
        eer, eer_threshold = _eer(far, tar, thresholds)
        for target in FAR_TARGETS:
            if n_neg * target < 1.0 - 1e-9:
                continue  # too few negatives to measure this FAR
            k = int(np.searchsorted(far, target, side="right")) - 1  # last point with FAR <= target
            tar_at_far[far_key(target)] = float(tar[k])
            tar_thresholds[far_key(target)] = (
                float(thresholds[k]) if np.isfinite(thresholds[k]) else None
            )
        keep = _downsample(far, MAX_ROC_POINTS)
        finite = np.where(np.isfinite(thresholds), thresholds, np.nan)
        roc = {
            "far": far[keep].tolist(),
            "tar": tar[keep].tolist(),
            "threshold": finite[keep].tolist(),
        }

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
        auc=auc,
        eer=eer,
        eer_threshold=eer_threshold,
        tar_at_far=tar_at_far,
        tar_thresholds=tar_thresholds,
        roc=roc,
    )


def pair_scores(embeddings: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of rows of L2-normalized ``embeddings`` (float64 (P,))."""
    import torch

    index = torch.as_tensor(np.asarray(pairs, dtype=np.int64))
    a = embeddings[index[:, 0]].double()
    b = embeddings[index[:, 1]].double()
    return (a * b).sum(dim=1).numpy()


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
) -> dict[str, Any]:
    """Embed ``vset``'s images with ``backbone`` and run `verify` on its pairs.

    Returns a JSON-safe dict: ``benchmark``, ``pairs``, ``accuracy`` (flip-test embeddings
    when ``flip``), ``accuracy_std``, ``threshold`` (cosine), the other keys of
    `VerificationResult.to_dict`, and with ``flip`` also ``accuracy_noflip`` /
    ``accuracy_noflip_std`` / ``threshold_noflip``. ``resized_from`` is the native image
    size (H, W) when images were resized to ``input_size``, else None.
    """
    from eqmcli.embed import extract_embeddings

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
    result = verify(pair_scores(main, vset.pairs), vset.issame, folds=vset.folds)
    out: dict[str, Any] = {"benchmark": vset.name, "flip": bool(flip), **result.to_dict()}
    if flip:
        plain = verify(pair_scores(emb.plain, vset.pairs), vset.issame, folds=vset.folds)
        out["accuracy_noflip"] = plain.accuracy
        out["accuracy_noflip_std"] = plain.accuracy_std
        out["threshold_noflip"] = plain.threshold
    out["images"] = int(emb.plain.shape[0])
    out["input_size"] = [int(input_size[0]), int(input_size[1])]
    out["resized_from"] = list(emb.resized_from) if emb.resized_from else None
    out["seconds"] = round(time.perf_counter() - started, 3)
    return _json_safe(out)
