"""Template aggregation, pair scoring and 1:N search against explicit-loop references."""

from __future__ import annotations

import numpy as np
import pytest

from eqmcli.errors import UserError
from eqmcli.evaluation.search import identification, top_k
from eqmcli.evaluation.templates import score_pairs, template_features


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _reference_templates(feats, templates, medias, weights):
    """InsightFace's rule by explicit loops: mean per media, sum per template, normalize."""
    out = {}
    for t in sorted(set(templates.tolist())):
        total = np.zeros(feats.shape[1])
        for m in sorted(set(medias[templates == t].tolist())):
            rows = [i for i in range(len(feats)) if templates[i] == t and medias[i] == m]
            total += np.mean([feats[i] * weights[i] for i in rows], axis=0)
        out[t] = total / np.linalg.norm(total)
    return out


def test_template_features_match_explicit_loops() -> None:
    rng = np.random.default_rng(0)
    n, d = 120, 8
    feats = rng.normal(size=(n, d)).astype(np.float32)  # raw: norms kept
    templates = rng.choice([3, 7, 11, 40, 41], size=n)
    medias = rng.integers(100, 106, size=n)
    weights = rng.uniform(0.5, 1.0, size=n).astype(np.float32)
    result = template_features(feats, templates, medias, weights)
    reference = _reference_templates(feats.astype(np.float64), templates, medias, weights)
    assert result.ids.tolist() == sorted(reference)
    for row, t in enumerate(result.ids):
        np.testing.assert_allclose(result.features[row], reference[t], atol=2e-6)
        assert result.images[row] == int((templates == t).sum())
        assert result.media[row] == len(set(medias[templates == t].tolist()))


@pytest.mark.parametrize("method", ["gram", "gather"])
def test_pair_scores_are_template_cosines_and_unknown_templates_are_named(
    method: str, monkeypatch
) -> None:
    monkeypatch.setattr("eqmcli.evaluation.templates.GRAM_BLOCK", 3)  # several blocks
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(30, 6)).astype(np.float32)
    templates = np.repeat(np.arange(10), 3)
    medias = np.arange(30)
    tf = template_features(feats, templates, medias)
    first, second = rng.integers(0, 10, 25), rng.integers(0, 10, 25)
    scores = score_pairs(tf, first, second, method=method, chunk=7)
    for k in range(25):
        a = feats[templates == first[k]].sum(0)
        b = feats[templates == second[k]].sum(0)
        expected = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        assert scores[k] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(UserError, match="1 template ids have no image .first: 99"):
        score_pairs(tf, np.array([1, 99]), np.array([2, 3]))


def test_top_k_matches_a_full_sort() -> None:
    rng = np.random.default_rng(2)
    probes, gallery = _unit(rng.normal(size=(50, 5))), _unit(rng.normal(size=(40, 5)))
    scores, index = top_k(probes, gallery, 4, chunk=9)
    full = probes @ gallery.T
    for p in range(50):
        order = sorted(range(40), key=lambda g: -full[p, g])[:4]
        assert index[p].tolist() == order
        np.testing.assert_allclose(scores[p], full[p, order], atol=1e-6)


def _reference_identification(probes, probe_subjects, gallery, gallery_subjects, fpir):
    """CMC by explicit ranking; TPIR@FPIR by trying every threshold."""
    scores = probes @ gallery.T
    ranks, top = [], []
    for p in range(len(probes)):
        order = sorted(range(len(gallery)), key=lambda g: -scores[p, g])
        top.append(scores[p, order[0]])
        mates = [i for i, g in enumerate(order) if gallery_subjects[g] == probe_subjects[p]]
        ranks.append(mates[0] + 1 if mates else 0)
    ranks, top = np.array(ranks), np.array(top)
    mated = ranks > 0
    cmc = {r: np.mean(ranks[mated] <= r) for r in (1, 5, 10)}
    best = 0.0
    for t in sorted(set(scores.reshape(-1).tolist())) + [np.inf]:
        if np.mean(top[~mated] >= t) <= fpir:
            hits = 0
            for p in np.nonzero(mated)[0]:
                mate_score = max(
                    scores[p, g] for g in range(len(gallery))
                    if gallery_subjects[g] == probe_subjects[p]
                )
                hits += ranks[p] == 1 and mate_score >= t
            best = max(best, hits / mated.sum())
    return cmc, best


def test_identification_matches_explicit_ranking_and_threshold_search() -> None:
    rng = np.random.default_rng(3)
    centres = _unit(rng.normal(size=(30, 8)))
    gallery_subjects = np.arange(20)  # subjects 20..29 are never enrolled
    gallery = _unit(centres[:20] + 0.3 * rng.normal(size=(20, 8)))
    probe_subjects = rng.integers(0, 30, size=400)
    probes = _unit(centres[probe_subjects] + 0.5 * rng.normal(size=(400, 8)))
    result = identification("G1", probes, probe_subjects, gallery, gallery_subjects)
    for fpir, key in ((1e-2, "1e-02"), (1e-1, "1e-01")):
        cmc, tpir = _reference_identification(
            probes, probe_subjects, gallery, gallery_subjects, fpir
        )
        assert result.tpir_at_fpir[key] == pytest.approx(tpir)
    assert result.cmc == {str(r): pytest.approx(v) for r, v in cmc.items()}
    assert result.mated == int((probe_subjects < 20).sum())
    assert result.non_mated == 400 - result.mated >= 100
    closed = identification("G", probes[:5], probe_subjects[:5] % 20, gallery, gallery_subjects)
    assert closed.non_mated == 0 and closed.tpir_at_fpir == {"1e-02": None, "1e-01": None}


def test_megaface_rank1_and_tar_match_brute_force() -> None:
    from eqmcli.evaluation.megaface.protocol import distractor_union, megaface_numbers

    rng = np.random.default_rng(4)
    ids = [f"person{k % 5}" for k in range(23)]
    centres = _unit(rng.normal(size=(5, 6)))
    probes = _unit(centres[[int(i[-1]) for i in ids]] + 0.6 * rng.normal(size=(23, 6)))
    names = [f"d{k}" for k in range(300)]
    lists = {10: names[:10], 100: names[50:150], 300: names}  # 10 and 100: not nested
    union, members = distractor_union(lists)
    distractors = _unit(rng.normal(size=(len(union), 6)))
    numbers = megaface_numbers(probes, ids, distractors, members, far=1e-2)
    for size, paths in lists.items():
        rows = [union.index(p) for p in paths]
        scores = probes @ distractors[rows].T
        correct = total = 0
        for g in range(23):
            for p in range(23):
                if g != p and ids[g] == ids[p]:
                    total += 1
                    correct += probes[g] @ probes[p] >= scores[p].max()
        assert numbers["rank1"][str(size)] == pytest.approx(correct / total)
        assert numbers["distractors"][str(size)] == len(paths)
        impostors = np.sort(scores.reshape(-1))[::-1]
        allowed = int(np.floor(1e-2 * impostors.size))
        genuine = [probes[g] @ probes[p] for g in range(23) for p in range(g + 1, 23)
                   if ids[g] == ids[p]]
        expected = np.mean(np.array(genuine) > impostors[allowed])
        assert numbers["tar_at_far_1e6"][str(size)] == pytest.approx(expected)
    assert numbers["probe_pairs"] == sum(c * (c - 1) for c in (5, 5, 5, 4, 4))


def test_megaface_search_chunks_agree_with_one_block() -> None:
    from eqmcli.evaluation.megaface.protocol import distractor_scores

    rng = np.random.default_rng(5)
    probes, distractors = _unit(rng.normal(size=(9, 4))), _unit(rng.normal(size=(500, 4)))
    members = {50: np.arange(500) < 50, 500: np.ones(500, bool), 7: np.arange(500) % 71 == 3}
    whole = distractor_scores(probes, distractors, members, far=1e-2, chunk=10_000)
    pieces = distractor_scores(probes, distractors, members, far=1e-2, chunk=7)
    for size in members:
        np.testing.assert_allclose(pieces.best[size], whole.best[size], atol=1e-6)
        np.testing.assert_allclose(pieces.top_impostors[size], whole.top_impostors[size], atol=1e-6)
        full = np.sort((probes @ distractors[members[size]].T).reshape(-1))[::-1]
        keep = int(np.floor(1e-2 * full.size)) + 1 if full.size * 1e-2 >= 1 else 0
        np.testing.assert_allclose(whole.top_impostors[size], full[:keep], atol=1e-6)


def test_nearest_point_tar_is_insightfaces_rule_on_sklearns_roc() -> None:
    from sklearn.metrics import roc_curve as sk_roc_curve

    from eqmcli.evaluation.ijb.protocol import IJB_FAR_TARGETS, nearest_point_tar
    from eqmcli.evaluation.verification import roc_curve

    rng = np.random.default_rng(6)
    same = rng.random(20_000) < 0.05
    scores = np.round(rng.normal(size=20_000) + 1.5 * same, 3)  # ties on purpose
    far, tar, _ = roc_curve(scores, same)
    found = nearest_point_tar(far, tar, int(same.sum()), int((~same).sum()))
    sk_far, sk_tar, _ = sk_roc_curve(same, scores)  # drop_intermediate=True, as InsightFace
    sk_far, sk_tar = np.flipud(sk_far), np.flipud(sk_tar)
    for target in IJB_FAR_TARGETS:
        _, index = min(zip(abs(sk_far - target), range(len(sk_far)), strict=True))
        assert found[f"{target:.0e}"] == pytest.approx(sk_tar[index])
