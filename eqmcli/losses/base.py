"""The cosine classifier and the pieces every head shares.

A head maps embeddings `(B, d)` and labels `(B,)` to a scalar loss (mean over the batch).
Margin heads are one pipeline (`margin_loss`) with two parts that vary:

    x, y = reduction.gather(x, y)           # the batch (all ranks' when class-sharded)
    cos = cosine_matrix(x, W)               # (B, C) cosines, float32 (float64 stays float64)
    logits = margin.transform(cos, cols)    # THE shared piece; cols[i] == -1: no target here
    log_p_y = reduction.log_prob(logits, cols, ...)   # whole rows, or all-reduced shards
    loss = margin.sample_loss(log_p_y).mean()

`margin` (the loss: EqM, ArcFace, ...) is the same object whatever the reduction;
`reduction` (`eqmcli.losses.reduction`) is `WholeRows` here and `ClassSharded` in
`eqmcli.distributed`. Statistics follow the same split: `margin.stat_terms` gives
per-sample terms, the reduction sums them over ranks, `margin.stats_from_terms` turns
them into `last_stats`; they are computed only while `head.collect_stats` is true (the
trainer sets it on logging steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqmcli.devices import full_float32_matmul
from eqmcli.errors import UserError
from eqmcli.losses.reduction import WholeRows, target_log_prob, wide

ElementwiseFn = Callable[[Tensor], Tensor]


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
    it spares several (C, d)-sized passes in forward and backward. Everything runs in
    float32 (or float64), the matmul too, under autocast and with TF32 allowed
    (`full_float32_matmul`): bf16 would round the cosines by up to ~2e-3, coarse next to
    the margins' thresholds. The result is float32 (or float64).
    """
    x, w = aligned(embeddings, weight)
    with full_float32_matmul(x.device):
        raw = F.linear(F.normalize(x, dim=1), w)
    return raw * w.norm(dim=1).clamp_min(1e-12).reciprocal()


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
    subclasses it, so `head.cosine(x).argmax(1)` is a closed-set prediction. `rows` < C
    holds only a slice of the classes (a class shard); `generator` seeds the initial W.
    """

    def __init__(
        self, num_classes: int, embedding_dim: int, init_std: float = 0.01, *,
        rows: int | None = None, generator: torch.Generator | None = None,
    ) -> None:
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
        self.generator = generator
        self.weight = nn.Parameter(torch.empty(rows or num_classes, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize W ~ Normal(0, init_std²)."""
        nn.init.normal_(self.weight, std=self.init_std, generator=self.generator)

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
    no_grad, only while `collect_stats` is true) so `last_stats` holds the latest
    diagnostics. Statistics stay as one small tensor until `last_stats` is read, so a GPU
    step does not synchronize for them. `reduction` says where the classes live (see
    `eqmcli.losses.reduction`); the training-state methods below go through it, so the
    trainer and checkpoints treat every head alike.
    """

    #: True when the logits are an elementwise function of the cosines (`transform`),
    #: the condition for splitting the classes over ranks
    shardable = False

    def __init__(
        self, name: str, num_classes: int, embedding_dim: int, hyperparameters: dict[str, Any],
        *, rows: int | None = None, generator: torch.Generator | None = None,
        reduction: WholeRows | None = None,
    ) -> None:
        super().__init__(num_classes, embedding_dim, rows=rows, generator=generator)
        self.name = name
        self.hyperparameters = dict(hyperparameters)
        self.reduction = reduction or WholeRows()
        self.collect_stats = True
        self._stat_keys: tuple[str, ...] = ()
        self._stat_values: Tensor | None = None

    @property
    def last_stats(self) -> dict[str, float]:
        """Diagnostics of the last forward pass that collected them, as python floats."""
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

    # ------------------------------------------------------------ training state
    def select_centres(self, weight: Tensor, columns: Tensor) -> tuple[Tensor, Tensor]:
        """The centres scored this step and the targets' columns among them (all of them
        here; Partial FC samples)."""
        return weight, columns

    def resume_at(self, step: int) -> None:
        """Continue state that advances per training forward pass (Partial FC draws) after
        `step` of them (optimizer steps x `train.grad_accumulation`)."""

    def full_state_dict(self) -> dict[str, Tensor] | None:
        """The state of the whole head (every class), as a checkpoint stores it.

        A collective when the classes are sharded (every rank must call it); None on the
        ranks that do not receive the gathered rows.
        """
        weight = self.reduction.full_rows(self.weight)
        if weight is None:
            return None
        return {**self.state_dict(), "weight": weight}

    def load_full_state_dict(
        self, state: Any, source: str = "the checkpoint", *, strict: bool = True
    ) -> None:
        """Load a whole-head state (this device's rows of it); `UserError` if it does not fit.

        With `strict=False`, buffers the state lacks (e.g. A-Softmax's iteration count)
        keep their current values.
        """
        expected = (self.num_classes, self.embedding_dim)
        weight = state.get("weight") if isinstance(state, dict) else None
        if weight is None or tuple(weight.shape) != expected:
            shape = None if weight is None else tuple(weight.shape)
            raise UserError(f"{source}'s head has shape {shape}, expected {expected}")
        missing = sorted(set(self.state_dict()) - set(state))
        if missing and strict:
            raise UserError(f"{source}'s head lacks {missing[0]!r} (loss {self.name})")
        current = self.state_dict()
        self.load_state_dict(
            {**{key: current[key] for key in missing}, **state,
             "weight": self.reduction.local_rows(weight)}
        )

    def extra_repr(self) -> str:
        hp = ", ".join(f"{k}={v:g}" for k, v in self.hyperparameters.items())
        return f"name={self.name!r}, {super().extra_repr()}" + (f", {hp}" if hp else "")


class MarginHead(Head):
    """A head whose loss is cross-entropy on an elementwise transform of the cosine matrix.

    Subclasses implement `transform(cos, labels) -> logits`; `forward` is `margin_loss`
    with this head as its own margin, the margin and the cross-entropy in float32 even
    under bf16/fp16 autocast.
    """

    shardable = True

    def transform(self, cos: Tensor, labels: Tensor) -> Tensor:
        """Logits (B, C) from cosines (B, C); labels[i] is the target column or -1."""
        raise NotImplementedError

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        return margin_loss(self, self, embeddings, labels)

    def stat_terms(self, cos: Tensor, columns: Tensor) -> Tensor:
        """Per-sample terms (k, B) that sum over class shards: here the target cosine."""
        return target_cosine(cos, columns).unsqueeze(0)

    def stats_from_terms(self, loss: Tensor, terms: Tensor) -> dict[str, Tensor]:
        """`last_stats` from the mean loss and the summed terms: loss, mean target cosine."""
        return {"loss": loss, "mean_cos_target": terms[0].mean()}


def target_cosine(cos: Tensor, columns: Tensor) -> Tensor:
    """cos θ_y per row (B,); 0 where the target is not among these columns (-1)."""
    owned = columns >= 0
    cos_y = cos.gather(1, columns.clamp_min(0).unsqueeze(1)).squeeze(1)
    return torch.where(owned, cos_y, torch.zeros_like(cos_y))


def margin_loss(head: Head, margin: MarginHead, embeddings: Tensor, labels: Tensor) -> Tensor:
    """The mean loss of `margin`'s transform on `head`'s weight, reduced by `head.reduction`.

    `head` owns the weight, the reduction, the centre selection and the statistics;
    `margin` is the loss (itself, or the full-size template of a class shard).
    """
    reduction = head.reduction
    x, labels = reduction.gather(embeddings, labels)
    weight, columns = head.select_centres(head.weight, reduction.columns(labels))
    cos = cosine_matrix(x, weight)
    terms = None
    if head.collect_stats:
        with torch.no_grad():
            terms = margin.stat_terms(cos.detach(), columns)
    logits = margin.transform(cos, columns)
    log_p_y, summed = reduction.log_prob(logits, columns, terms)
    loss = margin.sample_loss(log_p_y).mean()
    if summed is not None:
        with torch.no_grad():
            head._record_stats(**margin.stats_from_terms(loss.detach(), summed))
    return loss


def log1p_exp_floor(num_classes: int, scale: float, gap: float) -> float:
    """log(1 + (C−1)·e^{−s·gap}): the EqM loss floor for offset gap = t1 − t2."""
    return math.log1p((num_classes - 1) * math.exp(-scale * gap))
