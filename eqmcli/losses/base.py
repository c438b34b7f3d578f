"""The cosine classifier and the pieces every head shares.

A head maps embeddings `(B, d)` and labels `(B,)` to a scalar loss (mean over the batch).
Margin heads split that into reusable steps, so a class-sharded head can run the same
maths on its local columns:

    cos = head.cosine(x)                    # (B, C) cosines, float32 (float64 stays float64)
    logits = head.transform(cos, labels)    # margin transform; labels[i] == -1: no target here
    log_p_y = target_log_prob(logits, labels)   # or a distributed log-softmax over shards
    loss = head.sample_loss(log_p_y).mean()
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqmcli.errors import UserError

ElementwiseFn = Callable[[Tensor], Tensor]


def wide(tensor: Tensor) -> Tensor:
    """`tensor` in float32, or unchanged when it already is float32/float64."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.float()


def aligned(embeddings: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Embeddings and weight in one dtype: float32, or float64 when either is float64."""
    x, w = wide(embeddings), wide(weight)
    if x.dtype != w.dtype:
        common = torch.promote_types(x.dtype, w.dtype)
        x, w = x.to(common), w.to(common)
    return x, w


def cosine_matrix(embeddings: Tensor, weight: Tensor) -> Tensor:
    """cos θ between each L2-normalized embedding (B, d) and each row of `weight` (C, d).

    Computed as (x̂ Wᵀ) / ‖W_j‖ column-wise: the same value as normalizing W first, but
    it spares several (C, d)-sized passes in forward and backward. Norms run in float32
    (or float64); the matmul follows autocast; the result is float32 (or float64).
    """
    x, w = aligned(embeddings, weight)
    raw = wide(F.linear(F.normalize(x, dim=1), w))
    return raw * w.norm(dim=1).clamp_min(1e-12).reciprocal().to(raw.dtype)


def target_log_prob(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[i, labels[i]] per sample, shape (B,), computed in float32."""
    return -F.cross_entropy(wide(logits), labels, reduction="none")


def replace_target(
    logits: Tensor,
    cos: Tensor,
    labels: Tensor,
    target_fn: ElementwiseFn,
    other_fn: ElementwiseFn,
) -> Tensor:
    """Write target_fn(cos_y) into each row's target column of `logits` (in place).

    `logits` must already hold other_fn(cos) everywhere. Rows with label -1 (the target is
    not among these columns) keep other_fn. Only B-wide temporaries are created.
    """
    index = labels.clamp_min(0).unsqueeze(1)
    cos_y = cos.gather(1, index).squeeze(1)
    target = torch.where(labels >= 0, target_fn(cos_y), other_fn(cos_y))
    return logits.scatter_(1, index, target.unsqueeze(1).to(logits.dtype))


def safe_acos(cos: Tensor, eps: float = 1e-6) -> Tensor:
    """θ = acos(cos) in radians with cos clamped to [-1+eps, 1-eps] (finite gradient at ±1)."""
    return torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))


class CosineClassifier(nn.Module):
    """A bias-free classifier over `num_classes` with weight W of shape (C, d).

    `cosine(x)` gives cos θ between L2-normalized embeddings and class weights; every head
    subclasses it, so `head.cosine(x).argmax(1)` is a closed-set prediction.
    """

    def __init__(self, num_classes: int, embedding_dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if (
            isinstance(embedding_dim, bool)
            or not isinstance(embedding_dim, int)
            or embedding_dim < 1
        ):
            raise UserError(f"embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.init_std = init_std
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize W ~ Normal(0, init_std²)."""
        nn.init.normal_(self.weight, std=self.init_std)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """(B, C) cosines between embeddings (B, d) and the class weights."""
        return cosine_matrix(embeddings, self.weight)

    def forward(self, embeddings: Tensor) -> Tensor:  # type: ignore[override]
        """The cosine matrix (heads override this with the loss)."""
        return self.cosine(embeddings)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}"


class Head(CosineClassifier):
    """Base of every loss head: `forward(embeddings, labels) -> scalar loss`.

    Subclasses set `name` and implement `forward`; they call `_record_stats` (under
    no_grad) so `last_stats` holds the latest batch's diagnostics. Statistics stay as one
    small tensor until `last_stats` is read, so a GPU step does not synchronize for them.
    """

    def __init__(
        self, name: str, num_classes: int, embedding_dim: int, hyperparameters: dict[str, Any]
    ) -> None:
        super().__init__(num_classes, embedding_dim)
        self.name = name
        self.hyperparameters = dict(hyperparameters)
        self._stat_keys: tuple[str, ...] = ()
        self._stat_values: Tensor | None = None

    @property
    def last_stats(self) -> dict[str, float]:
        """Diagnostics of the last forward pass as python floats ({} before the first)."""
        if self._stat_values is None:
            return {}
        return dict(zip(self._stat_keys, self._stat_values.tolist(), strict=True))

    def _record_stats(self, **values: Tensor | float) -> None:
        """Store scalar statistics (tensors or floats) without a device synchronization."""
        self._stat_keys = tuple(values)
        self._stat_values = torch.stack(
            [torch.as_tensor(v, dtype=torch.float32, device=self.weight.device).reshape(())
             for v in values.values()]
        ).detach()

    def sample_loss(self, log_p_y: Tensor) -> Tensor:
        """Per-sample loss from the target log-probability: cross-entropy, −log p_y."""
        return -log_p_y

    def loss_from_logits(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean loss over the batch from full (B, C) logits."""
        return self.sample_loss(target_log_prob(logits, labels)).mean()

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        raise NotImplementedError

    def extra_repr(self) -> str:
        hp = ", ".join(f"{k}={v:g}" for k, v in self.hyperparameters.items())
        return f"name={self.name!r}, {super().extra_repr()}" + (f", {hp}" if hp else "")


class MarginHead(Head):
    """A head whose loss is cross-entropy on an elementwise transform of the cosine matrix.

    Subclasses implement `transform(cos, labels) -> logits`; `forward` is
    cosine -> transform -> loss, with the margin and the cross-entropy in float32 even
    under bf16/fp16 autocast.
    """

    def transform(self, cos: Tensor, labels: Tensor) -> Tensor:
        """Logits (B, C) from cosines (B, C); labels[i] is the target column or -1."""
        raise NotImplementedError

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        cos = self.cosine(embeddings)
        loss = self.loss_from_logits(self.transform(cos, labels), labels)
        with torch.no_grad():
            self._record_stats(**self.batch_stats(cos.detach(), labels, loss.detach()))
        return loss

    def batch_stats(self, cos: Tensor, labels: Tensor, loss: Tensor) -> dict[str, Tensor]:
        """Diagnostics for `last_stats`: the loss and the mean target cosine."""
        cos_y = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
        return {"loss": loss, "mean_cos_target": cos_y.mean()}


def log1p_exp_floor(num_classes: int, scale: float, gap: float) -> float:
    """log(1 + (C−1)·e^{−s·gap}): the EqM loss floor for offset gap = t1 − t2."""
    return math.log1p((num_classes - 1) * math.exp(-scale * gap))
