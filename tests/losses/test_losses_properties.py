"""Properties of the heads: EqM's four cases, monotone margins, NaN-free extremes, AMP, stats."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eqmcli.losses import LOSS_NAMES, MarginHead, a_softmax_psi, build_head, target_log_prob

MARGIN_NAMES = [n for n in LOSS_NAMES if n not in ("softmax", "sphereface")]


def _eqm(num_classes: int, dim: int, **hp: float) -> MarginHead:
    head = build_head("eqm", num_classes, dim, **hp).double()
    assert isinstance(head, MarginHead)
    return head


def _set_weight(head: torch.nn.Module, weight: torch.Tensor) -> None:
    with torch.no_grad():
        head.weight.copy_(weight)


def _assert_same_loss_and_gradients(
    first: torch.nn.Module,
    second: torch.nn.Module,
    weight: torch.Tensor,
    x: torch.Tensor,
    labels: torch.Tensor,
) -> None:
    """Both heads, given the class weights `weight`, give the same loss and the same
    gradients to x and W on (x, labels), to 1e-12 (float64)."""
    results = []
    for head in (first, second):
        _set_weight(head, weight)
        xi = x.clone().requires_grad_(True)
        loss = head(xi, labels)
        results.append((loss, *torch.autograd.grad(loss, [xi, head.weight])))
    for got, expected in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- EqM properties
def test_eqm_ideal_case_is_the_floor_with_zero_gradients() -> None:
    num_classes, dim, s, t1, t2 = 6, 8, 64.0, 0.5, 0.1
    head = _eqm(num_classes, dim, scale=s, t1=t1, t2=t2)
    eye = torch.eye(dim, dtype=torch.float64)
    _set_weight(head, eye[:num_classes])          # orthonormal class centres
    labels = torch.tensor([0, 3, 5])
    # cos θ_y = 0.8 >= t1, every other cosine 0 <= t2 (spare dimensions 6, 7)
    x = (0.8 * eye[labels] + 0.6 * eye[6]).requires_grad_(True)
    loss = head(x, labels)
    gx, gw = torch.autograd.grad(loss, [x, head.weight])
    floor = math.log(1 + (num_classes - 1) * math.exp(-s * (t1 - t2)))
    assert loss.item() == pytest.approx(floor, rel=1e-12)
    assert torch.count_nonzero(gx) == 0
    assert torch.count_nonzero(gw) == 0
    assert head.last_stats["loss_above_floor"] == pytest.approx(0.0, abs=1e-9)
    assert head.last_stats["case_ideal"] == 1.0


def _random_problem(seed: int, num_classes: int = 9, dim: int = 6, batch: int = 24):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    x[: batch // 3] += 2.5 * F.normalize(weight[labels[: batch // 3]], dim=1)  # some easy
    return x, weight, labels


def test_eqm_gradients_flow_only_to_violated_terms() -> None:
    """Per sample: W_y (and x) get gradient iff cos θ_y < t1; W_j iff cos θ_j > t2."""
    t1, t2 = 0.5, 0.1
    x, weight, labels = _random_problem(seed=3)
    head = _eqm(weight.shape[0], weight.shape[1], t1=t1, t2=t2)
    _set_weight(head, weight)
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
    seen = {"hard": 0, "easy": 0, "over": 0, "under": 0}
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        yi = labels[i : i + 1]
        gx, gw = torch.autograd.grad(head(xi, yi), [xi, head.weight])
        y = int(yi)
        hard = bool(cos[i, y] < t1)
        seen["hard" if hard else "easy"] += 1
        assert bool(gw[y].abs().sum() > 0) == hard, f"sample {i}: W_y gradient vs hardness"
        others = [j for j in range(weight.shape[0]) if j != y]
        for j in others:
            over = bool(cos[i, j] > t2)
            seen["over" if over else "under"] += 1
            assert bool(gw[j].abs().sum() > 0) == over, f"sample {i}, class {j}"
        ideal = not hard and not any(cos[i, j] > t2 for j in others)
        assert bool(gx.abs().sum() > 0) == (not ideal)
    assert min(seen.values()) > 0, seen  # every case was exercised


def test_eqm_worst_case_equals_normface() -> None:
    """With every target below t1 and every other cosine above t2 EqM is NormFace."""
    x, weight, labels = _random_problem(seed=4, dim=32)
    eqm = _eqm(weight.shape[0], weight.shape[1], scale=64.0, t1=0.95, t2=-0.95)
    normface = build_head("normface", weight.shape[0], weight.shape[1], scale=64.0).double()
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
    assert cos.abs().max() < 0.95  # the worst case holds for every term
    _assert_same_loss_and_gradients(eqm, normface, weight, x, labels)
    assert eqm.last_stats["case_both"] == 1.0


def test_eqm_logits_equal_normface_on_violated_terms() -> None:
    x, weight, labels = _random_problem(seed=5)
    eqm = _eqm(weight.shape[0], weight.shape[1], scale=64.0, t1=0.5, t2=0.1)
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
    logits = eqm.transform(cos, labels)
    target = F.one_hot(labels, weight.shape[0]).bool()
    violated = (target & (cos < 0.5)) | (~target & (cos > 0.1))
    assert violated.any() and (~violated).any()
    torch.testing.assert_close(logits[violated], 64.0 * cos[violated])
    clamped = torch.where(target, torch.full_like(cos, 64.0 * 0.5), torch.full_like(cos, 6.4))
    torch.testing.assert_close(logits[~violated], clamped[~violated])


def test_eqm_stats_case_fractions_sum_to_one() -> None:
    x, weight, labels = _random_problem(seed=6)
    head = _eqm(weight.shape[0], weight.shape[1], t1=0.5, t2=0.4)
    _set_weight(head, weight)
    loss = head(x, labels)
    stats = head.last_stats
    cases = ["case_ideal", "case_intra_only", "case_inter_only", "case_both"]
    assert all(isinstance(v, float) for v in stats.values())
    assert sum(stats[k] for k in cases) == pytest.approx(1.0)
    assert all(stats[k] > 0 for k in cases)  # a genuinely mixed batch
    assert stats["hard_fraction"] == pytest.approx(stats["case_intra_only"] + stats["case_both"])
    assert stats["inter_violation_fraction"] == pytest.approx(
        stats["case_inter_only"] + stats["case_both"]
    )
    assert stats["loss_above_floor"] == pytest.approx(loss.item() - head.floor, abs=1e-6)
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
    cos_y = cos.gather(1, labels[:, None]).squeeze(1)
    assert stats["hard_fraction"] == pytest.approx((cos_y < 0.5).double().mean().item())
    others = cos.scatter(1, labels[:, None], -1.0)  # the target column never counts
    assert stats["mean_inter_violations"] == pytest.approx(
        (others > 0.4).sum(1).double().mean().item())
    assert stats["mean_inter_violations"] > 1  # a count of classes, not a fraction


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_head_reports_loss_and_mean_target_cosine(name: str) -> None:
    head = build_head(name, 11, 4)
    assert head.last_stats == {}
    labels = torch.arange(6) % 11
    x = torch.randn(6, 4)
    loss = head(x, labels)
    stats = head.last_stats
    assert stats["loss"] == pytest.approx(loss.item())
    cos_y = head.cosine(x).gather(1, labels[:, None])
    assert stats["mean_cos_target"] == pytest.approx(cos_y.mean().item(), abs=1e-6)


# ------------------------------------------------------- ArcFace, A-Softmax, focal
def test_arcface_target_logit_is_monotone_over_zero_to_pi() -> None:
    head = build_head("arcface", 2, 3, scale=64.0, margin=0.5)
    theta = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    logits = head.transform(torch.cos(theta)[:, None].repeat(1, 2), torch.zeros_like(theta).long())
    target = logits[:, 0]
    assert torch.isfinite(target).all()
    assert (target[1:] - target[:-1]).max() <= 1e-9
    assert target[0].item() == pytest.approx(64.0 * math.cos(0.5))
    assert target[-1].item() == pytest.approx(64.0 * (-1.0 - 0.5 * math.sin(0.5)))


@pytest.mark.parametrize("name", MARGIN_NAMES)
def test_margin_transforms_are_nan_free_at_cos_plus_minus_one(name: str) -> None:
    head = build_head(name, 4, 3)
    cos = torch.tensor(
        [[1.0, -1.0, 0.0, 1.0], [-1.0, 1.0, 1.0, -1.0], [1.0, 1.0, -1.0, 0.0]],
        requires_grad=True,
    )
    labels = torch.tensor([0, 0, 2])
    logits = head.transform(cos, labels)
    loss = head.sample_loss(target_log_prob(logits, labels)).mean()
    (grad,) = torch.autograd.grad(loss, [cos])
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_heads_are_nan_free_for_embeddings_parallel_to_class_weights(name: str) -> None:
    head = build_head(name, 5, 4)
    labels = torch.tensor([0, 1, 2, 3])
    x = torch.cat([head.weight[:2] * 3.0, -head.weight[2:4]]).detach().requires_grad_(True)
    loss = head(x, labels)
    gx, gw = torch.autograd.grad(loss, [x, head.weight])
    assert torch.isfinite(loss) and torch.isfinite(gx).all() and torch.isfinite(gw).all()


def test_a_softmax_psi_is_continuous_and_monotone() -> None:
    for m in (1, 2, 3, 4):
        theta = torch.linspace(0.0, math.pi, 40001, dtype=torch.float64)
        psi = a_softmax_psi(torch.cos(theta), m)
        steps = psi[1:] - psi[:-1]
        assert steps.max() <= 1e-12, f"m={m}: not decreasing"
        # continuity: no jump larger than the steepest slope (m) times the grid step
        assert steps.abs().max() <= m * (theta[1] - theta[0]).item() * 1.01
        for k in range(1, m):  # both sides of every branch boundary kπ/m agree
            edge = torch.tensor([k * math.pi / m - 1e-9, k * math.pi / m + 1e-9],
                                dtype=torch.float64)
            left, right = a_softmax_psi(torch.cos(edge), m)
            assert abs(left - right) < 1e-6
        assert psi[0].item() == pytest.approx(1.0)
        assert psi[-1].item() == pytest.approx(1.0 - 2.0 * m)
        first = theta <= math.pi / m  # ψ = cos(mθ) on the first branch
        torch.testing.assert_close(psi[first], torch.cos(m * theta[first]))


def test_focal_with_gamma_zero_equals_normface() -> None:
    x, weight, labels = _random_problem(seed=7)
    focal = build_head("focal", 9, 6, scale=30.0, gamma=0.0).double()
    normface = build_head("normface", 9, 6, scale=30.0).double()
    _assert_same_loss_and_gradients(focal, normface, weight, x, labels)


def test_focal_down_weights_confident_samples() -> None:
    x, weight, labels = _random_problem(seed=8)
    losses = {}
    for gamma in (0.0, 2.0):
        head = build_head("focal", 9, 6, gamma=gamma).double()
        _set_weight(head, weight)
        losses[gamma] = head(x, labels).item()
    assert 0 < losses[2.0] < losses[0.0]


# ------------------------------------------------- precision, shards, checkpoints
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bf16_autocast_gives_finite_float32_loss(name: str) -> None:
    torch.manual_seed(0)
    head = build_head(name, 20, 16)
    x = torch.randn(8, 16, requires_grad=True)
    labels = torch.randint(0, 20, (8,))
    reference = head(x, labels).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(x, labels)
    (gx,) = torch.autograd.grad(loss, [x])
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(gx).all()
    assert loss.item() == pytest.approx(reference, rel=0.1, abs=0.5)


@pytest.mark.parametrize("name", MARGIN_NAMES)
def test_transform_on_class_shards_matches_the_full_transform(name: str) -> None:
    """labels == -1 means "target elsewhere": shards concatenate to the full logits."""
    head = build_head(name, 10, 4)
    assert isinstance(head, MarginHead)
    cos = torch.rand(6, 10, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 3, 4, 5, 9, 7])
    full = head.transform(cos, labels)
    parts = []
    for start, stop in ((0, 4), (4, 10)):
        inside = (labels >= start) & (labels < stop)
        local = torch.where(inside, labels - start, torch.full_like(labels, -1))
        parts.append(head.transform(cos[:, start:stop], local))
    torch.testing.assert_close(torch.cat(parts, dim=1), full)


def test_sphereface_lambda_anneals_and_resumes_exactly_from_state_dict() -> None:
    torch.manual_seed(0)
    head = build_head("sphereface", 12, 6)
    x, labels = torch.randn(5, 6), torch.randint(0, 12, (5,))
    for _ in range(3):
        head(x, labels)
    assert int(head.iteration) == 3
    assert head.last_stats["lambda"] == pytest.approx(1000.0 / (1 + 0.12 * 2))
    state = head.state_dict()
    assert "iteration" in state
    resumed = build_head("sphereface", 12, 6)
    resumed.load_state_dict(state)
    assert torch.equal(head(x, labels), resumed(x, labels))
    assert resumed.last_stats["lambda"] == pytest.approx(1000.0 / (1 + 0.12 * 3))
    resumed.eval()
    resumed(x, labels)
    assert int(resumed.iteration) == 4  # evaluation does not advance the schedule
    resumed.iteration.fill_(10**6)
    assert resumed.current_lambda().item() == pytest.approx(5.0)  # λ_min
