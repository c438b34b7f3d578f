"""Heads whose logits scale with the embedding norm ‖x‖: plain softmax and A-Softmax.

They have the module interface of every head (`forward(embeddings, labels) -> loss`,
`weight`, `last_stats`, `name`, `hyperparameters`) but no cosine-only `transform`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from eqmcli.losses.angular import angular_psi
from eqmcli.losses.base import Head, aligned, replace_target, wide


class SoftmaxHead(Head):
    """Plain softmax cross-entropy on an unnormalized, bias-free linear layer: logits = Wx."""

    def __init__(self, name: str, num_classes: int, embedding_dim: int, **hp: Any) -> None:
        super().__init__(name, num_classes, embedding_dim, hp)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        x, w = aligned(embeddings, self.weight)
        logits = wide(F.linear(x, w))
        loss = self.loss_from_logits(logits, labels)
        if not self.collect_stats:
            return loss
        with torch.no_grad():
            logit_y = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
            x_norm = x.norm(dim=1)
            cos_y = logit_y / (x_norm * w[labels].norm(dim=1)).clamp_min(1e-12)
            self._record_stats(
                loss=loss.detach(), mean_cos_target=cos_y.mean(), mean_feature_norm=x_norm.mean()
            )
        return loss


def a_softmax_psi(cos: Tensor, m: int) -> Tensor:
    """A-Softmax ψ(θ) = (−1)^k cos(mθ) − 2k for θ ∈ [kπ/m, (k+1)π/m], from cos θ.

    ψ is continuous and decreasing on [0, π] (from 1 to 1 − 2m). k is piecewise constant,
    so the gradient flows through the polynomial cos(mθ) only.
    """
    return angular_psi(cos, m)


class SphereFaceHead(Head):
    """A-Softmax (SphereFace) with the original λ annealing; logits scale with ‖x‖.

    target = ‖x‖ (λ cos θ_y + ψ(θ_y)) / (1 + λ), others ‖x‖ cos θ_j, with
    λ = max(λ_min, base·(1 + γ·it)^(−p)) and `it` the count of training forward passes so
    far, kept in the `iteration` buffer so a checkpoint resumes the schedule exactly.
    """

    iteration: Tensor

    def __init__(self, name: str, num_classes: int, embedding_dim: int, **hp: Any) -> None:
        super().__init__(name, num_classes, embedding_dim, hp)
        self.margin = int(hp["margin"])
        self.lambda_base = float(hp["lambda_base"])
        self.lambda_gamma = float(hp["lambda_gamma"])
        self.lambda_power = float(hp["lambda_power"])
        self.lambda_min = float(hp["lambda_min"])
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """λ at the current iteration, a 0-d tensor (no device synchronization)."""
        it = self.iteration.to(dtype)
        value = self.lambda_base * (1.0 + self.lambda_gamma * it).pow(-self.lambda_power)
        return value.clamp_min(self.lambda_min)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        x, _ = aligned(embeddings, self.weight)
        x_norm = x.norm(dim=1)
        cos = self.cosine(embeddings)
        lam = self.current_lambda(cos.dtype)

        def target(cos_y: Tensor) -> Tensor:
            return x_norm * (lam * cos_y + a_softmax_psi(cos_y, self.margin)) / (1.0 + lam)

        def other(cos_y: Tensor) -> Tensor:
            return x_norm * cos_y

        logits = replace_target(cos * x_norm.unsqueeze(1), cos, labels, target, other)
        loss = self.loss_from_logits(logits, labels)
        with torch.no_grad():
            if self.collect_stats:
                cos_y = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
                self._record_stats(
                    loss=loss.detach(),
                    mean_cos_target=cos_y.mean(),
                    mean_feature_norm=x_norm.mean(),
                    **{"lambda": lam},
                )
            if self.training:
                self.iteration += 1
        return loss
