"""Loss names, defaults and validation of hyperparameters."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from eqmcli.errors import UserError
from eqmcli.losses import (
    LOSS_NAMES,
    ArcFaceHead,
    CosFaceHead,
    EqMHead,
    build_head,
    cosine_thresholds,
    resolve_hyperparameters,
)
from eqmcli.run.recipe import recipe_from_mapping


def test_defaults_follow_the_design_table() -> None:
    assert resolve_hyperparameters("eqm") == {"scale": 64.0, "t1": 0.5, "t2": 0.1}
    assert resolve_hyperparameters("arcface") == {"scale": 64.0, "margin": 0.5}
    # issue 11: CosFace keeps its paper's s = 64, AM-Softmax its s = 30 (both m = 0.35)
    assert resolve_hyperparameters("cosface") == {"scale": 64.0, "margin": 0.35}
    assert resolve_hyperparameters("am") == {"scale": 30.0, "margin": 0.35}
    assert resolve_hyperparameters("ga-softmax") == {"scale": 30.0, "margin": 1.5}
    assert resolve_hyperparameters("focal") == {"scale": 30.0, "gamma": 2.0}
    assert resolve_hyperparameters("normface") == {"scale": 30.0}
    assert resolve_hyperparameters("softmax") == {}
    assert resolve_hyperparameters("sphereface") == {
        "margin": 4, "lambda_base": 1000.0, "lambda_gamma": 0.12,
        "lambda_power": 1.0, "lambda_min": 5.0,
    }


def test_given_values_override_defaults_and_build_the_head() -> None:
    head = build_head("eqm", 10, 4, scale=32, t2=0.2)
    assert isinstance(head, EqMHead)
    assert head.name == "eqm"
    assert head.hyperparameters == {"scale": 32.0, "t1": 0.5, "t2": 0.2}
    assert tuple(head.weight.shape) == (10, 4)
    assert head.floor == pytest.approx(math.log1p(9 * math.exp(-32 * 0.3)))


def test_am_is_cosface_with_am_softmax_defaults_and_keeps_its_name() -> None:
    assert "am" in LOSS_NAMES and "cosface" in LOSS_NAMES
    head = build_head("AM", 5, 3, margin=0.4)
    assert isinstance(head, CosFaceHead) and head.name == "am"
    assert resolve_hyperparameters("am", scale=64.0) == resolve_hyperparameters("cosface")


def arcface_target(margin: float, theta: torch.Tensor, **flags: bool) -> torch.Tensor:
    """ArcFace's target logit (s = 1) at angles `theta`, built without the margin check."""
    head = ArcFaceHead("arcface", 2, 2, scale=1.0, margin=margin, **flags)
    return head.target(torch.cos(theta))


def test_arcface_fallback_is_monotone_until_the_margin_the_comment_names() -> None:
    theta = torch.linspace(0.0, math.pi, 200_001, dtype=torch.float64)
    for margin in (0.5, math.pi / 2, 2.0, 2.32):
        steps = arcface_target(margin, theta).diff()
        assert (steps <= 1e-12).all(), f"not monotone at m = {margin}"
    assert (arcface_target(2.36, theta).diff() > 1e-6).any(), "monotone beyond m ~ 2.33 too"
    assert math.cos(2.33) + 2.33 * math.sin(2.33) == pytest.approx(1.0, abs=5e-3)


def test_arcface_detached_margin_has_the_value_of_cos_theta_plus_m_and_the_gradient_of_cos():
    theta = torch.linspace(0.1, 2.5, 50, dtype=torch.float64)
    cos = torch.cos(theta).requires_grad_(True)
    head = ArcFaceHead("arcface", 2, 2, scale=64.0, margin=0.5, detach_margin=True)
    value = head.target(cos)
    torch.testing.assert_close(value, 64.0 * torch.cos(theta + 0.5), atol=1e-9, rtol=0)
    (gradient,) = torch.autograd.grad(value.sum(), cos)
    torch.testing.assert_close(gradient, torch.full_like(cos, 64.0))
    exact = ArcFaceHead("arcface", 2, 2, scale=64.0, margin=0.5)
    (exact_gradient,) = torch.autograd.grad(exact.target(cos).sum(), cos)
    assert not torch.allclose(exact_gradient, gradient), "the default keeps the exact gradient"
    assert resolve_hyperparameters("arcface", detach_margin=True)["detach_margin"] is True
    with pytest.raises(UserError, match="detach_margin"):
        resolve_hyperparameters("arcface", detach_margin="sometimes")
    with pytest.raises(UserError, match="detach_margin"):
        resolve_hyperparameters("cosface", detach_margin=True)
    recipe = recipe_from_mapping({"loss": {"name": "arcface", "detach_margin": True}})
    assert build_head(recipe.loss.name, 4, 2, **recipe.loss.hyperparameters()).detach_margin


def test_sphereface_margin_accepts_an_integral_float() -> None:
    assert resolve_hyperparameters("sphereface", margin=3.0)["margin"] == 3


@pytest.mark.parametrize(
    ("name", "given", "named"),
    [
        ("eqm", {"t1": 0.1, "t2": 0.5}, "t1"),
        ("eqm", {"t1": 0.3, "t2": 0.3}, "t2"),
        ("eqm", {"t1": 1.5}, "t1"),
        ("eqm", {"t1": math.nan}, "t1"),
        ("eqm", {"scale": 0.0}, "scale"),
        ("normface", {"scale": -1.0}, "scale"),
        ("sphereface", {"margin": 2.5}, "margin"),
        ("sphereface", {"margin": 0}, "margin"),
        ("sphereface", {"lambda_min": -1.0}, "lambda_min"),
        ("arcface", {"margin": 2.0}, "margin"),
        ("cosface", {"margin": -0.1}, "margin"),
        ("ga-softmax", {"margin": 0.5}, "margin"),
        ("focal", {"gamma": -1.0}, "gamma"),
        ("cosface", {"scale": "big"}, "scale"),
        ("arcface", {"scale": True}, "scale"),
        ("eqm", {"margin": 0.3}, "margin"),
        ("softmax", {"scale": 1.0}, "scale"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_parameter(name: str, given: dict, named: str) -> None:
    with pytest.raises(UserError, match=named) as info:
        build_head(name, 10, 4, **given)
    assert isinstance(info.value, ValueError)
    assert name in str(info.value)


def test_unknown_loss_name_is_named_with_a_suggestion() -> None:
    with pytest.raises(UserError, match=r"unknown loss 'arcfce'.*did you mean 'arcface'"):
        resolve_hyperparameters("arcfce")


@pytest.mark.parametrize(("num_classes", "dim", "named"), [(1, 4, "num_classes"),
                                                           (5, 0, "embedding_dim")])
def test_bad_sizes_raise_naming_them(num_classes: int, dim: int, named: str) -> None:
    with pytest.raises(UserError, match=named):
        build_head("normface", num_classes, dim)


def test_recipe_loss_section_fills_defaults_and_rejects_bad_values() -> None:
    from pydantic import ValidationError

    from eqmcli.run.recipe import LossSection

    section = LossSection(name="arcface", margin=0.3)
    assert section.hyperparameters() == {"scale": 64.0, "margin": 0.3}
    with pytest.raises(ValidationError, match="t1"):
        LossSection(name="eqm", t1=0.1, t2=0.5)


def test_cosine_thresholds_are_eqms_t1_and_t2_and_empty_for_other_losses():
    eqm = resolve_hyperparameters("eqm", t1=0.6)
    assert cosine_thresholds("EqM", eqm) == {"t1": 0.6, "t2": 0.1}
    assert cosine_thresholds("eqm", {"t1": 0.4}) == {"t1": 0.4}
    assert cosine_thresholds("arcface", resolve_hyperparameters("arcface")) == {}
    with pytest.raises(UserError, match="unknown loss"):
        cosine_thresholds("eqn", {})


def test_no_module_outside_the_losses_decides_on_a_loss_name():
    """`canonical_name(x) == "eqm"`, `head.name != "eqm"`, ...: such decisions live in
    `eqmcli/losses/` (e.g. `cosine_thresholds`), so a new loss changes one package."""
    names = "|".join(re.escape(name) for name in LOSS_NAMES)
    pattern = re.compile(rf"""name\)?\s*[=!]=\s*["']({names})["']""")
    package = Path(__file__).resolve().parents[2] / "eqmcli"
    offenders = [
        str(path.relative_to(package)) for path in package.rglob("*.py")
        if package / "losses" not in path.parents and pattern.search(path.read_text())
    ]
    assert offenders == []
