"""The combined margin s·(ψ(m1·θ + m2) − m3) (InsightFace's `margin_list`) against the heads
it generalizes: ArcFace, CosFace/AM and A-Softmax (docs/arcface-torch.md)."""

from __future__ import annotations

import math

import pytest
import torch

from eqmcli.errors import UserError
from eqmcli.losses import build_head
from eqmcli.run.recipe import recipe_from_mapping

C, D, B = 9, 6, 16


def problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 embeddings (B, D), centres (C, D) and labels; every fourth sample lies
    nearly opposite its centre (θ_y near π), every fourth next to it (θ_y near 0)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(C, D, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=generator)
    x = torch.randn(B, D, generator=generator, dtype=torch.float64)
    x[0::4] = -weight[labels[0::4]] + 0.1 * x[0::4]
    x[1::4] = weight[labels[1::4]] + 0.1 * x[1::4]
    return x, weight, labels


def loss_and_gradients(head, x, weight, labels):
    head = head.double()
    with torch.no_grad():
        head.weight.copy_(weight)
    x = x.clone().requires_grad_(True)
    loss = head(x, labels)
    gx, gw = torch.autograd.grad(loss, [x, head.weight])
    return loss.detach(), gx, gw


def target_angles(x, weight, labels) -> torch.Tensor:
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(weight, dim=1).T
    return torch.acos(cos.gather(1, labels[:, None]).squeeze(1).clamp(-1, 1))


@pytest.mark.parametrize("name", ["cosface", "am"])
def test_combined_with_m1_1_m2_0_is_cosface_everywhere(name: str) -> None:
    x, weight, labels = problem(0)
    assert (target_angles(x, weight, labels) > 3.0).any(), "θ_y near π is covered"
    for scale, m in ((30.0, 0.35), (64.0, 0.2)):
        want = loss_and_gradients(build_head(name, C, D, scale=scale, margin=m), x, weight, labels)
        got = loss_and_gradients(build_head("combined", C, D, scale=scale, m1=1.0, m2=0.0, m3=m),
                                 x, weight, labels)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_combined_with_m1_1_m3_0_is_arcface_where_theta_plus_m_is_at_most_pi() -> None:
    x, weight, labels = problem(1)
    keep = target_angles(x, weight, labels) + 0.5 <= math.pi
    assert (~keep).any(), "the problem reaches beyond θ_y + m = π"
    x, labels = x[keep], labels[keep]
    want = loss_and_gradients(build_head("arcface", C, D, scale=64.0, margin=0.5),
                              x, weight, labels)
    got = loss_and_gradients(build_head("combined", C, D, scale=64.0, m1=1.0, m2=0.5, m3=0.0),
                             x, weight, labels)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def target_logit(head, theta: torch.Tensor) -> torch.Tensor:
    cos = torch.cos(theta)[:, None].repeat(1, 2)
    return head.transform(cos, torch.zeros_like(theta, dtype=torch.long))[:, 0]


def test_beyond_pi_combined_continues_cos_monotonically_where_arcface_steps_down() -> None:
    theta = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    arcface = target_logit(build_head("arcface", 2, 3, scale=1.0, margin=0.5), theta)
    combined = target_logit(build_head("combined", 2, 3, scale=1.0, m1=1.0, m2=0.5, m3=0.0),
                            theta)
    inside = theta + 0.5 <= math.pi
    torch.testing.assert_close(combined[inside], arcface[inside], rtol=0, atol=1e-12)
    beyond = ~inside  # ψ(φ) = −cos φ − 2 on [π, 2π]; ArcFace: cos θ − m·sin m
    # (atol: sin θ is kept >= 1e-6 for a finite gradient at θ = π, as in ArcFace)
    torch.testing.assert_close(combined[beyond], -torch.cos(theta[beyond] + 0.5) - 2.0,
                               rtol=0, atol=1e-6)
    assert (combined[1:] - combined[:-1]).max() <= 1e-12, "decreasing in θ"
    assert (combined[1:] - combined[:-1]).abs().max() < 1e-3, "no step"


@pytest.mark.parametrize("m", [2, 3, 4])
def test_integer_m1_is_a_softmax_without_lambda_on_embeddings_of_norm_s(m: int) -> None:
    """A-Softmax's logits are ‖x‖·ψ(θ_y) and ‖x‖·cos θ_j when λ = 0; the combined head's are
    s·ψ(θ_y) and s·cos θ_j. On embeddings with ‖x‖ = s they are the same logits: equal loss
    and centre gradients, and embedding gradients equal up to their radial part (A-Softmax
    also moves ‖x‖, the combined head sees only x/‖x‖)."""
    scale = 7.0
    x, weight, labels = problem(2)
    x = torch.nn.functional.normalize(x, dim=1) * scale
    sphere = build_head("sphereface", C, D, margin=m, lambda_base=0.0, lambda_min=0.0)
    combined = build_head("combined", C, D, scale=scale, m1=float(m), m2=0.0, m3=0.0)
    loss_s, gx_s, gw_s = loss_and_gradients(sphere, x, weight, labels)
    loss_c, gx_c, gw_c = loss_and_gradients(combined, x, weight, labels)
    torch.testing.assert_close(loss_c, loss_s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw_c, gw_s, rtol=1e-10, atol=1e-12)
    radial = torch.nn.functional.normalize(x, dim=1)

    def tangential(g: torch.Tensor) -> torch.Tensor:
        return g - (g * radial).sum(1, keepdim=True) * radial

    torch.testing.assert_close(tangential(gx_c), tangential(gx_s), rtol=1e-10, atol=1e-12)
    assert (gx_c * radial).sum(1).abs().max() < 1e-12
    assert (gx_s * radial).sum(1).abs().max() > 1e-3, "A-Softmax's gradient moves ‖x‖"


def test_non_integer_m1_with_all_three_margins_follows_the_formula() -> None:
    m1, m2, m3, s = 0.9, 0.4, 0.15, 64.0  # InsightFace's published combination
    head = build_head("combined", 2, 3, scale=s, m1=m1, m2=m2, m3=m3)
    theta = torch.linspace(0.0, math.pi, 4001, dtype=torch.float64)[1:-1]
    got = target_logit(head, theta)
    phi = m1 * theta + m2
    inside = phi <= math.pi
    assert (~inside).any()  # 0.9·π + 0.4 > π: ψ's second branch, −cos φ − 2
    torch.testing.assert_close(got[inside], s * (torch.cos(phi[inside]) - m3))
    torch.testing.assert_close(got[~inside], s * (-torch.cos(phi[~inside]) - 2.0 - m3))
    assert (got[1:] - got[:-1]).max() <= 1e-9


def test_combined_recipe_keys_and_bad_values_are_named() -> None:
    recipe = recipe_from_mapping({"loss": {"name": "combined", "m1": 1.0, "m2": 0.3, "m3": 0.2}})
    assert recipe.loss.hyperparameters() == {"scale": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2}
    defaults = recipe_from_mapping({"loss": {"name": "combined"}}).loss.hyperparameters()
    assert defaults == {"scale": 64.0, "m1": 1.0, "m2": 0.5, "m3": 0.0}, "arcface_torch's"
    with pytest.raises(UserError, match="m1 must be > 0"):
        recipe_from_mapping({"loss": {"name": "combined", "m1": 0.0}})
    with pytest.raises(UserError, match="m2 must lie in"):
        recipe_from_mapping({"loss": {"name": "combined", "m2": 2.0}})
    with pytest.raises(UserError, match="has no hyperparameter 'margin'"):
        recipe_from_mapping({"loss": {"name": "combined", "margin": 0.5}})
