"""Elementwise margin heads: normface, cosface/am, arcface, combined, ga-softmax, focal, eqm.

Each `transform(cos, labels)` maps the cosine matrix (B, C) to logits (B, C) in float32
(float64 inputs stay float64); `labels[i]` is the target column of row i, or -1 when the
target lives in another shard. Formulas and defaults: docs/reference.md §1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from eqmcli.losses.angular import angular_psi
from eqmcli.losses.base import (
    MarginHead,
    log1p_exp_floor,
    replace_target,
    safe_acos,
    target_cosine,
    wide,
)


class NormFaceHead(MarginHead):
    """Normalized softmax: every logit is s·cos θ."""

    def __init__(self, name: str, num_classes: int, embedding_dim: int, **hp: Any) -> None:
        super().__init__(name, num_classes, embedding_dim, hp)
        self.scale = float(hp["scale"])

    def transform(self, cos: Tensor, labels: Tensor) -> Tensor:
        return wide(cos) * self.scale


class FocalHead(NormFaceHead):
    """NormFace logits with the focal loss −(1−p_y)^γ log p_y (γ = 0 is NormFace)."""

    def __init__(self, name: str, num_classes: int, embedding_dim: int, **hp: Any) -> None:
        super().__init__(name, num_classes, embedding_dim, **hp)
        self.gamma = float(hp["gamma"])

    def sample_loss(self, log_p_y: Tensor) -> Tensor:
        # 1 - p = -expm1(log p); the clamp keeps pow's gradient finite at p = 1
        one_minus_p = (-torch.expm1(log_p_y)).clamp_min(1e-12)
        return -one_minus_p.pow(self.gamma) * log_p_y


class _TargetMarginHead(MarginHead):
    """A head whose non-target logits are s·other(cos) and target logit s·target(cos_y)."""

    def __init__(self, name: str, num_classes: int, embedding_dim: int, **hp: Any) -> None:
        super().__init__(name, num_classes, embedding_dim, hp)
        self.scale = float(hp["scale"])

    def other(self, cos: Tensor) -> Tensor:
        """Non-target logit (B, C) from cosines; default s·cos θ."""
        return cos * self.scale

    def target(self, cos_y: Tensor) -> Tensor:
        """Target logit (B,) from the target cosines."""
        raise NotImplementedError

    def transform(self, cos: Tensor, labels: Tensor) -> Tensor:
        cos = wide(cos)
        return replace_target(self.other(cos), cos, labels, self.target, self.other)


class CosFaceHead(_TargetMarginHead):
    """CosFace / AM-Softmax: target s·(cos θ_y − m), m in cosine units.

    One formula, two names with their papers' defaults: `cosface` s = 64, m = 0.35 (Wang
    et al., CosFace, CVPR 2018) and `am` s = 30, m = 0.35 (Wang et al., AM-Softmax, 2018).
    """

    def __init__(self, name: str, num_classes: int, embedding_dim: int, **hp: Any) -> None:
        super().__init__(name, num_classes, embedding_dim, **hp)
        self.margin = float(hp["margin"])

    def target(self, cos_y: Tensor) -> Tensor:
        return (cos_y - self.margin) * self.scale


class ArcFaceHead(_TargetMarginHead):
    """ArcFace: target s·cos(θ_y + m), m in radians; s·(cos θ_y − m·sin m) where θ_y + m > π.

    Gradient: eqmcli back-propagates the exact derivative of cos(θ_y + m) (through
    cos(θ+m) = cos θ cos m − sin θ sin m), as the ArcFace paper (Deng et al., CVPR 2019)
    and InsightFace's code did until late 2022. Today's InsightFace `arcface_torch`
    computes the margin under `torch.no_grad`: the target logit has the value
    s·cos(θ_y + m) (no fallback) but the gradient of s·cos θ_y. `detach_margin=True`
    selects that variant.
    """

    def __init__(self, name: str, num_classes: int, embedding_dim: int, **hp: Any) -> None:
        super().__init__(name, num_classes, embedding_dim, **hp)
        self.margin = float(hp["margin"])
        self.detach_margin = bool(hp.get("detach_margin", False))

    def target(self, cos_y: Tensor) -> Tensor:
        m = self.margin
        c = cos_y.clamp(-1.0, 1.0)
        # sin θ from cos θ; the clamp keeps sqrt's gradient finite at cos = ±1
        sin = (1.0 - c * c).clamp_min(1e-12).sqrt()
        shifted = c * math.cos(m) - sin * math.sin(m)  # cos(θ + m)
        if self.detach_margin:  # value cos(θ + m), gradient that of cos θ
            return (cos_y + (shifted - cos_y).detach()) * self.scale
        fallback = c - m * math.sin(m)
        # θ + m > π  <=>  cos θ < cos(π − m) = −cos m
        return torch.where(c > -math.cos(m), shifted, fallback) * self.scale


class CombinedMarginHead(_TargetMarginHead):
    """The combined margin: target s·(ψ(m1·θ_y + m2) − m3), others s·cos θ_j.

    ψ(φ) = cos φ while φ <= π and continues it monotonically beyond (`angular_psi`, A-Softmax's
    extension), so the target logit decreases in θ_y for every m1 > 0. m1 multiplies the
    angle (SphereFace), m2 adds to it (ArcFace, radians), m3 is subtracted from the cosine
    (CosFace); InsightFace's `margin_list` = (m1, m2, m3). At m1 = 1, m2 = 0 it is CosFace
    with m = m3 exactly; at m1 = 1, m3 = 0 it is ArcFace with m = m2 wherever θ_y + m2 <= π;
    at m2 = m3 = 0 and integer m1 its logits are A-Softmax's without λ (λ = 0) with ‖x‖
    replaced by s (docs/arcface-torch.md).
    """

    def __init__(self, name: str, num_classes: int, embedding_dim: int, **hp: Any) -> None:
        super().__init__(name, num_classes, embedding_dim, **hp)
        self.m1, self.m2, self.m3 = float(hp["m1"]), float(hp["m2"]), float(hp["m3"])

    def target(self, cos_y: Tensor) -> Tensor:
        return (angular_psi(cos_y, self.m1, self.m2) - self.m3) * self.scale


def linear_angular(theta: Tensor) -> Tensor:
    """g(θ) = 1 − 2θ/π: maps θ ∈ [0, π] (radians) linearly onto [1, −1]."""
    return 1.0 - theta * (2.0 / math.pi)


class GASoftmaxHead(_TargetMarginHead):
    """GA-Softmax: target s·g(min(mθ_y, π)), others s·g(θ_j), g(θ) = 1 − 2θ/π."""

    def __init__(self, name: str, num_classes: int, embedding_dim: int, **hp: Any) -> None:
        super().__init__(name, num_classes, embedding_dim, **hp)
        self.margin = float(hp["margin"])

    def other(self, cos: Tensor) -> Tensor:
        return linear_angular(safe_acos(cos)) * self.scale

    def target(self, cos_y: Tensor) -> Tensor:
        theta = (safe_acos(cos_y) * self.margin).clamp_max(math.pi)
        return linear_angular(theta) * self.scale


class EqMHead(_TargetMarginHead):
    """Equalized Margin: target s·min(cos θ_y, t1), others s·max(cos θ_j, t2) (Eq. 7).

    `last_stats`: loss, loss above the floor log(1 + (C−1)e^{−s(t1−t2)}), the fraction of
    hard samples (cos θ_y < t1), of samples with an inter-class violation (some j ≠ y with
    cos θ_j > t2), the mean number of such classes j per sample, and the fractions of the
    four cases: ideal, intra only, inter only, both.
    """

    def __init__(self, name: str, num_classes: int, embedding_dim: int, **hp: Any) -> None:
        super().__init__(name, num_classes, embedding_dim, **hp)
        self.t1 = float(hp["t1"])
        self.t2 = float(hp["t2"])
        self.floor = log1p_exp_floor(num_classes, self.scale, self.t1 - self.t2)

    def other(self, cos: Tensor) -> Tensor:
        # clamp_min's backward needs only its input, so the scale can be applied in place
        return torch.clamp_min(cos, self.t2).mul_(self.scale)

    def target(self, cos_y: Tensor) -> Tensor:
        return cos_y.clamp_max(self.t1) * self.scale

    def stat_terms(self, cos: Tensor, columns: Tensor) -> Tensor:
        """(2, B): the target cosine and the count of non-target columns above t2."""
        cos_y = target_cosine(cos, columns)
        owned = columns >= 0
        # int32 counts: summing the bool matrix without an int64 copy of it
        over = (cos > self.t2).sum(1, dtype=torch.int32) - (owned & (cos_y > self.t2)).int()
        return torch.stack([cos_y, over.to(cos_y.dtype)])

    def stats_from_terms(self, loss: Tensor, terms: Tensor) -> dict[str, Tensor]:
        return eqm_stats(loss, terms[0], terms[1], t1=self.t1, floor=self.floor)


def eqm_stats(
    loss: Tensor, cos_y: Tensor, violations: Tensor, *, t1: float, floor: float
) -> dict[str, Tensor]:
    """EqM diagnostics from the mean loss, the target cosines (B,) and each sample's count of
    other classes with a cosine above t2 (B,)."""
    hard = cos_y < t1
    easy = ~hard
    violating = violations > 0
    calm = ~violating

    def fraction(mask: Tensor) -> Tensor:
        return mask.float().mean()

    return {
        "loss": loss,
        "loss_above_floor": loss - floor,
        "mean_cos_target": cos_y.mean(),
        "hard_fraction": fraction(hard),
        "inter_violation_fraction": fraction(violating),
        "mean_inter_violations": violations.float().mean(),
        "case_ideal": fraction(easy & calm),
        "case_intra_only": fraction(hard & calm),
        "case_inter_only": fraction(easy & violating),
        "case_both": fraction(hard & violating),
    }
