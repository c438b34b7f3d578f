"""Every head against a float64 per-sample reference written from docs/reference.md §1."""

from __future__ import annotations

import math

import pytest
import torch

from eqmcli.losses import LOSS_NAMES, build_head, resolve_hyperparameters

C, D, B = 7, 5, 8


def _reference_logit(name: str, hp: dict, x: torch.Tensor, w: torch.Tensor, is_target: bool,
                     iteration: int) -> torch.Tensor:
    """One logit z_j for one sample, from docs/reference.md §1 (float64, autograd-friendly)."""
    if name == "softmax":
        return w @ x
    c = (x / x.norm()) @ (w / w.norm())
    theta = torch.acos(c)
    s = hp.get("scale", 1.0)
    if name in ("normface", "focal"):
        return s * c
    if name in ("cosface", "am"):
        return s * (c - hp["margin"]) if is_target else s * c
    if name == "arcface":
        m = hp["margin"]
        if not is_target:
            return s * c
        if theta + m <= math.pi:
            return s * torch.cos(theta + m)
        return s * (c - m * math.sin(m))
    if name == "combined":  # s·(ψ(m1·θ + m2) − m3), ψ A-Softmax's monotone extension of cos
        if not is_target:
            return s * c
        m1, m2 = hp["m1"], hp["m2"]
        phi = m1 * theta + m2
        k = min(math.floor(phi.item() / math.pi), math.ceil(m1 + m2 / math.pi) - 1)
        return s * ((-1) ** k * torch.cos(phi) - 2 * k - hp["m3"])
    if name == "ga-softmax":
        def g(angle: torch.Tensor) -> torch.Tensor:
            return 1 - 2 * angle / math.pi

        if is_target:
            return s * g(torch.clamp(hp["margin"] * theta, max=math.pi))
        return s * g(theta)
    if name == "eqm":
        return s * torch.clamp(c, max=hp["t1"]) if is_target else s * torch.clamp(c, min=hp["t2"])
    if name == "sphereface":
        m = hp["margin"]
        norm = x.norm()
        if not is_target:
            return norm * c
        k = math.floor(m * theta.item() / math.pi)
        psi = (-1) ** k * torch.cos(m * theta) - 2 * k
        lam = max(hp["lambda_min"], hp["lambda_base"]
                  * (1 + hp["lambda_gamma"] * iteration) ** (-hp["lambda_power"]))
        return norm * (lam * c + psi) / (1 + lam)
    raise AssertionError(name)


def reference_loss(name: str, hp: dict, x: torch.Tensor, weight: torch.Tensor,
                   labels: torch.Tensor, iteration: int = 0) -> torch.Tensor:
    """Mean loss over the batch, one sample and one class at a time."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(x.shape[0]):
        y = int(labels[i])
        logits = torch.stack([
            _reference_logit(name, hp, x[i], weight[j], j == y, iteration)
            for j in range(weight.shape[0])
        ])
        log_p = logits[y] - torch.logsumexp(logits, dim=0)
        if name == "focal":
            total = total - (1 - torch.exp(log_p)) ** hp["gamma"] * log_p
        else:
            total = total - log_p
    return total / x.shape[0]


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings covering aligned, orthogonal-ish and anti-aligned targets."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(C, D, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=gen)
    x = torch.randn(B, D, generator=gen, dtype=torch.float64) * 2.0
    noise = 0.2 * torch.randn(3, D, generator=gen, dtype=torch.float64)
    x[0] = -weight[labels[0]] + noise[0]  # θ_y near π: ArcFace fallback, GA clamp
    x[1] = weight[labels[1]] + noise[1]   # θ_y near 0: EqM easy sample
    x[2] = weight[labels[2]] * 0.3 + noise[2] * 5
    return x, weight, labels


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_value_and_gradients_match_float64_reference(name: str) -> None:
    x, weight, labels = _data()
    hp = resolve_hyperparameters(name)
    head = build_head(name, C, D).double()
    iteration = 0
    if name == "sphereface":
        iteration = 40  # λ = 1000 / (1 + 0.12·40) ≈ 172: ψ has a visible share
        head.iteration.fill_(iteration)
    with torch.no_grad():
        head.weight.copy_(weight)
    x_head = x.clone().requires_grad_(True)
    loss = head(x_head, labels)
    gx, gw = torch.autograd.grad(loss, [x_head, head.weight])

    x_ref = x.clone().requires_grad_(True)
    w_ref = weight.clone().requires_grad_(True)
    expected = reference_loss(name, hp, x_ref, w_ref, labels, iteration)
    rx, rw = torch.autograd.grad(expected, [x_ref, w_ref])

    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx, rx, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gw, rw, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_float32_head_matches_float64_reference(name: str) -> None:
    x, weight, labels = _data(seed=1)
    head = build_head(name, C, D)
    with torch.no_grad():
        head.weight.copy_(weight.float())
    loss = head(x.float(), labels)
    expected = reference_loss(name, resolve_hyperparameters(name), x, weight, labels)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected.item()) <= 1e-4 * max(1.0, abs(expected.item()))


def test_reference_data_reaches_the_special_branches() -> None:
    """The fixture really exercises ArcFace's fallback and EqM's easy/hard split."""
    x, weight, labels = _data()
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(weight, dim=1).T
    cos_y = cos.gather(1, labels[:, None]).squeeze(1)
    assert (torch.acos(cos_y) + 0.5 > math.pi).any()
    assert (cos_y >= 0.5).any() and (cos_y < 0.5).any()
