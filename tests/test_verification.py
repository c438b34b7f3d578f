"""The verification protocol against independent references (sklearn, brute force)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eqmcli.errors import UserError
from eqmcli.verification import fold_bounds, roc_curve, verify


def _random_scores(n: int, seed: int, separation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    scores = np.tanh(rng.normal(size=n) * 0.5 + separation * 0.3 * issame)
    return scores, issame


def _brute_force_accuracy(
    scores: np.ndarray, issame: np.ndarray, folds: int = 10
) -> tuple[list, list]:
    """Reference: try every candidate threshold one at a time (no vectorization)."""
    accs, thresholds = [], []
    n = len(scores)
    size, extra = divmod(n, folds)
    start = 0
    for k in range(folds):
        stop = start + size + (1 if k < extra else 0)
        test = list(range(start, stop))
        train = [i for i in range(n) if i < start or i >= stop]
        values = sorted(set(float(scores[i]) for i in train))
        candidates = [values[0] - 1.0]
        candidates += [(values[i] + values[i + 1]) / 2 for i in range(len(values) - 1)]
        candidates += [values[-1] + 1.0]
        best_t, best_correct = None, -1
        for t in candidates:  # ascending: ties keep the smallest threshold
            correct = sum((scores[i] > t) == issame[i] for i in train)
            if correct > best_correct:
                best_t, best_correct = t, correct
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
    from eqmcli.data.verification import VerificationSet
    from eqmcli.verification import evaluate_set

    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    pairs = np.arange(40).reshape(20, 2)
    issame = np.tile([True, False], 10)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 8))
    model.train()
    vset = VerificationSet("toy", images, pairs, issame, folds=10)
    out = evaluate_set(model, vset, device="cpu", input_size=(8, 8), progress=False, batch_size=16)
    assert model.training  # mode restored
    assert out["benchmark"] == "toy" and out["pairs"] == 20
    assert 0.0 <= out["accuracy"] <= 1.0 and 0.0 <= out["accuracy_noflip"] <= 1.0
    assert out["resized_from"] == [16, 16]
    json.dumps(out, allow_nan=False)
    plain = evaluate_set(model, vset, device="cpu", input_size=(8, 8), flip=False, progress=False)
    assert "accuracy_noflip" not in plain and plain["flip"] is False
