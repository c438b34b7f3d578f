"""The verification protocol against independent references (sklearn, brute force)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eqmcli.errors import UserError
from eqmcli.evaluation.verification import (
    best_threshold,
    fold_bounds,
    pair_scores,
    roc_curve,
    verify,
)


def _random_scores(n: int, seed: int, separation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    scores = np.tanh(rng.normal(size=n) * 0.5 + separation * 0.3 * issame)
    return scores, issame


def _brute_force_accuracy(
    scores: np.ndarray, issame: np.ndarray, folds: int = 10
) -> tuple[list, list]:
    """Reference: try every threshold interval one at a time (no vectorization), then take
    the middle of the widest run of best intervals."""
    accs, thresholds = [], []
    n = len(scores)
    size, extra = divmod(n, folds)
    start = 0
    for k in range(folds):
        stop = start + size + (1 if k < extra else 0)
        test = list(range(start, stop))
        train = [i for i in range(n) if i < start or i >= stop]
        values = sorted(set(float(scores[i]) for i in train))
        # interval k of thresholds: [ends[k], ends[k + 1]), classifying like any t inside it
        ends = [values[0] - 1.0, *values, values[-1] + 1.0]
        counts = []
        for k in range(len(ends) - 1):
            t = (ends[k] + ends[k + 1]) / 2
            counts.append(sum((scores[i] > t) == issame[i] for i in train))
        best_correct = max(counts)
        plateaus = []  # (low, high) of each run of consecutive best intervals
        for k, count in enumerate(counts):
            if count != best_correct:
                continue
            if plateaus and plateaus[-1][2] == k - 1:
                plateaus[-1] = (plateaus[-1][0], ends[k + 1], k)
            else:
                plateaus.append((ends[k], ends[k + 1], k))
        widest = max(plateaus, key=lambda p: p[1] - p[0])  # first of equally wide ones
        best_t = (widest[0] + widest[1]) / 2
        thresholds.append(best_t)
        accs.append(sum((scores[i] > best_t) == issame[i] for i in test) / len(test))
        start = stop
    return accs, thresholds


@pytest.mark.parametrize(("n", "seed"), [(200, 0), (157, 1), (300, 2)])
def test_fold_accuracy_matches_brute_force(n: int, seed: int) -> None:
    scores, issame = _random_scores(n, seed)
    scores[::7] = np.round(scores[::7], 1)  # some tied scores
    result = verify(scores, issame, folds=10)
    accs, thresholds = _brute_force_accuracy(scores, issame)
    np.testing.assert_allclose(result.fold_accuracies, accs)
    np.testing.assert_allclose(result.fold_thresholds, thresholds)
    assert result.accuracy == pytest.approx(np.mean(accs))
    assert result.accuracy_std == pytest.approx(np.std(accs))  # population std
    assert result.threshold == pytest.approx(np.mean(thresholds))


def test_auc_matches_sklearn_and_eer_is_consistent() -> None:
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    scores, issame = _random_scores(2000, 3)
    scores[::5] = np.round(scores[::5], 2)
    result = verify(scores, issame)
    assert result.auc == pytest.approx(roc_auc_score(issame, scores), abs=1e-12)
    far, tar, _ = roc_curve(scores, issame)
    sk_far, sk_tar, _ = sk_roc(issame, scores, drop_intermediate=False)
    np.testing.assert_allclose(far, sk_far)
    np.testing.assert_allclose(tar, sk_tar)
    # EER: FAR equals FRR there, to within one ROC step.
    k = np.argmin(np.abs((1 - tar) - far))
    assert result.eer == pytest.approx(
        (far[k] + 1 - tar[k]) / 2, abs=2.0 / min(issame.sum(), (~issame).sum())
    )


def test_contiguous_folds_and_perfect_separation() -> None:
    assert fold_bounds(6000, 10)[1] == (600, 1200)
    assert fold_bounds(13, 10)[:4] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    issame = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    scores = np.where(issame, 0.8, 0.1)
    result = verify(scores, issame)
    assert result.accuracy == 1.0 and result.accuracy_std == 0.0
    assert 0.1 < result.threshold < 0.8
    assert result.auc == 1.0 and result.eer == 0.0


def test_tar_at_far_only_when_enough_negatives() -> None:
    scores, issame = _random_scores(6000, 4, separation=3.0)
    result = verify(scores, issame).to_dict()
    n_neg = int((~issame).sum())
    assert n_neg >= 1000 and n_neg < 10000
    assert result["tar_at_far"]["1e-03"] is not None and 0 <= result["tar_at_far"]["1e-03"] <= 1
    assert result["tar_at_far"]["1e-04"] is None  # not 0: 3000 negatives cannot measure 1e-4
    # TAR@FAR=1e-3 by hand: threshold admits at most floor(1e-3 * n_neg) negatives.
    neg = np.sort(scores[~issame])[::-1]
    allowed = int(np.floor(1e-3 * n_neg))
    t = neg[allowed]  # accepting >= t would admit allowed + 1 negatives
    expected = np.mean(scores[issame] > t)
    assert result["tar_at_far"]["1e-03"] == pytest.approx(expected)


def test_result_is_json_safe_and_roc_downsampled() -> None:
    scores, issame = _random_scores(5000, 5)
    data = verify(scores, issame).to_dict()
    text = json.dumps(data, allow_nan=False)
    assert "Infinity" not in text
    assert 2 <= len(data["roc"]["far"]) <= 502
    assert data["roc"]["far"][0] == 0.0 and data["roc"]["tar"][-1] == 1.0
    assert all(0.0 <= v <= 1.0 for v in data["roc"]["tar"])


def test_bad_input_is_a_user_error() -> None:
    with pytest.raises(UserError):
        verify(np.zeros(5), np.zeros(4, bool))
    with pytest.raises(UserError):
        verify(np.zeros(5), np.zeros(5, bool))  # fewer pairs than folds
    with pytest.raises(UserError):
        verify(np.full(20, np.nan), np.zeros(20, bool))


def test_single_class_reports_none_not_zero() -> None:
    data = verify(np.linspace(0, 1, 40), np.ones(40, bool)).to_dict()
    assert data["auc"] is None and data["eer"] is None
    assert data["tar_at_far"] == {"1e-03": None, "1e-04": None}


def test_evaluate_set_flip_and_noflip() -> None:
    from eqmcli.evaluation.pair_sets import VerificationSet
    from eqmcli.evaluation.verification import evaluate_set

    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    pairs = np.arange(40).reshape(20, 2)
    issame = np.tile([True, False], 10)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 8))
    model.train()
    vset = VerificationSet("toy", images, pairs, issame, folds=10)
    out = evaluate_set(model, vset, device="cpu", input_size=(8, 8), progress=False, batch_size=16)
    assert model.training  # mode restored
    assert out.benchmark == "toy" and out.result.pairs == 20
    assert 0.0 <= out.accuracy <= 1.0 and out.noflip is not None
    assert 0.0 <= out.noflip.accuracy <= 1.0
    assert out.resized_from == (16, 16)
    data = out.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["resized_from"] == [16, 16] and "accuracy_noflip" in data
    plain = evaluate_set(model, vset, device="cpu", input_size=(8, 8), flip=False, progress=False)
    assert plain.noflip is None and plain.flip is False
    assert "accuracy_noflip" not in plain.to_dict() and "roc" not in plain.to_dict(roc=False)


def test_tied_thresholds_take_the_middle_of_the_best_plateau() -> None:
    # negatives at 0.1, 0.2, positives at 0.5, 0.6, 0.9: every t in [0.2, 0.5) is perfect.
    scores = np.array([0.1, 0.2, 0.5, 0.6, 0.9])
    issame = np.array([False, False, True, True, True])
    threshold, accuracy = best_threshold(scores, issame)
    assert accuracy == 1.0 and threshold == pytest.approx(0.35)
    # a plateau spanning two intervals: crossing the tied pair at 0.4 (one matched, one
    # mismatched) trades one error for another, so every t in [0.2, 0.7) gives 5/6.
    scores = np.array([0.1, 0.2, 0.4, 0.4, 0.7, 0.8])
    issame = np.array([False, False, True, False, True, True])
    threshold, accuracy = best_threshold(scores, issame)
    assert accuracy == pytest.approx(5 / 6) and threshold == pytest.approx(0.45)
    # two equally good plateaus: the wider one wins ([0.5, 0.9) over [0.1, 0.2)).
    scores = np.array([0.1, 0.2, 0.5, 0.9, 1.0])
    issame = np.array([False, True, False, True, True])
    threshold, _ = best_threshold(scores, issame)
    assert threshold == pytest.approx(0.7)


def test_float32_pair_scores_match_float64() -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4000, 512, generator=generator)
    noisy = base[:2000] + 0.8 * torch.randn(2000, 512, generator=generator)
    emb = torch.nn.functional.normalize(torch.cat((base, noisy)), dim=1)
    rng = np.random.default_rng(0)
    random_pairs = rng.integers(0, 4000, size=(3000, 2))
    matched_pairs = np.stack((np.arange(2000), 4000 + np.arange(2000)), axis=1)
    for pairs, bound in ((random_pairs, 3e-8), (matched_pairs, 2.5e-7)):
        scores = pair_scores(emb, pairs)
        assert scores.dtype == np.float32
        exact = (emb.double()[pairs[:, 0]] * emb.double()[pairs[:, 1]]).sum(dim=1).numpy()
        assert np.abs(scores.astype(np.float64) - exact).max() <= bound
    pairs = np.concatenate((matched_pairs, random_pairs[:2000]))
    issame = np.r_[np.ones(2000, bool), np.zeros(2000, bool)]
    order = rng.permutation(4000)
    single = verify(pair_scores(emb, pairs[order]), issame[order])
    exact = (emb.double()[pairs[order, 0]] * emb.double()[pairs[order, 1]]).sum(dim=1).numpy()
    assert single.fold_accuracies == verify(exact, issame[order]).fold_accuracies
