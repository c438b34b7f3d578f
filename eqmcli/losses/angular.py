"""Multiplicative and additive angular margins computed from cos θ: cos(m1·θ + m2) and its
monotone extension ψ, shared by A-Softmax (m1 = m, m2 = 0) and the combined margin.

θ is never formed where it need not be: for an integer m1, cos(m1·θ) and sin(m1·θ)/sin θ
are the Chebyshev polynomials T_m1 and U_(m1−1) of cos θ, so values and gradients stay
exact and finite at θ = 0 and π; any other m1 goes through θ = atan2(sin θ, cos θ), with
sin θ kept >= 1e-6 as ArcFace keeps it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def chebyshev(cos: Tensor, degree: int, *, second_kind: bool = False) -> Tensor:
    """T_degree(cos) = cos(degree·θ), or U_degree(cos) = sin((degree+1)·θ)/sin θ when
    `second_kind` (the three-term recurrence; finite gradient everywhere)."""
    previous, current = torch.ones_like(cos), (2.0 if second_kind else 1.0) * cos
    if degree == 0:
        return previous
    for _ in range(degree - 1):
        previous, current = current, 2.0 * cos * current - previous
    return current


def cos_angle_margin(cos: Tensor, m1: float, m2: float) -> Tensor:
    """cos(m1·θ + m2) from cos θ (clamped to [−1, 1]); m1 > 0, m2 in radians."""
    c = cos.clamp(-1.0, 1.0)
    # sin θ from cos θ; the clamp keeps sqrt's gradient finite at cos = ±1
    sin = (1.0 - c * c).clamp_min(1e-12).sqrt()
    if float(m1).is_integer():
        m = int(m1)
        sin_m = sin * chebyshev(c, m - 1, second_kind=True)  # sin(m·θ)
        return chebyshev(c, m) * math.cos(m2) - sin_m * math.sin(m2)
    return torch.cos(torch.atan2(sin, c) * m1 + m2)


def angular_psi(cos: Tensor, m1: float, m2: float = 0.0) -> Tensor:
    """ψ(φ) = (−1)^k cos φ − 2k for φ = m1·θ + m2 in [kπ, (k+1)π], from cos θ.

    ψ is continuous and decreasing in θ on [0, π] (m1 > 0) and equals cos(m1·θ + m2)
    while m1·θ + m2 <= π. k is piecewise constant, so the gradient flows through
    cos φ only. m1 = m, m2 = 0 is A-Softmax's ψ (Liu et al., CVPR 2017).
    """
    c = cos.clamp(-1.0, 1.0)
    last = math.ceil(m1 + m2 / math.pi) - 1  # the branch that holds φ = m1·π + m2
    with torch.no_grad():
        k = torch.floor(torch.acos(c) * (m1 / math.pi) + m2 / math.pi).clamp_(0, max(last, 0))
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * cos_angle_margin(c, m1, m2) - 2.0 * k
