"""The class-sharded margin head: model-parallel softmax with optional Partial FC.

With N ranks, rank r holds the centres of a contiguous class range
`[start_r, stop_r)` (`shard_bounds`; the first `C mod N` ranks hold one extra class).
Each step:

1. the embeddings `(B, d)` and labels `(B,)` of every rank are all-gathered into the
   global batch `(M, d)`, M = N·B (`all_gather_rows`, whose backward sums the gradient
   of the gathered rows over the ranks and returns each rank its own rows);
2. each rank computes the cosines `(M, C_r)` against its own centres and applies the
   loss's elementwise margin transform (`head.transform(cos, local_labels)`, the label
   mapped to a local column, or -1 where the class lives on another rank);
3. the cross-entropy is assembled from an all-reduced row max, an all-reduced sum of
   exponentials and the target logit from its owning rank (`sharded_target_log_prob`);
   the backward needs no communication: d log p_y / d logit_j = 1[j = y] − p_j.

`ClassSharded` is that reduction (the pluggable part of `eqmcli.losses.base.margin_loss`);
`ShardedHead` is a head whose weight is one rank's shard and whose reduction is
`ClassSharded`. The loss is the mean over the global batch and is identical on every
rank. Each rank's centre gradient is exact; each rank's embedding gradient is the exact
gradient of the global loss with respect to its own rows, so the backbone gradients must
be **summed** (not averaged) over the ranks (`DistributedContext.wrap_backbone` installs
that hook).

Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single
Machine", 2021): in training mode with `sample_rate < 1`, each rank keeps the centres of
the classes present in the global batch plus a random sample of its other centres, up to
`ceil(sample_rate · C_r)` in all; the draw is deterministic from `(seed, shard, draw
counter)`. Centres not drawn get a zero gradient that step. With `sample_rate == 1` the
head is exactly the full sharded head.

The idea of the model-parallel softmax follows InsightFace's arcface_torch (Deng et al.);
the code here is written from the maths above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from eqmcli.errors import UserError
from eqmcli.losses import build_head
from eqmcli.losses.base import Head, MarginHead, margin_loss
from eqmcli.losses.reduction import WholeRows
from eqmcli.seeds import seeded_generator


def shard_bounds(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """The class range `[start, stop)` of `rank` when `num_classes` are split over ranks.

    Contiguous ranges; the first `num_classes % world_size` ranks hold one class more.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _group_size(group: Any) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class _AllGatherRows(torch.autograd.Function):
    """Concatenate every rank's `(B, ...)` tensor along dim 0; backward sums and splits."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        world = dist.get_world_size(group)
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        # every rank holds the gradient of the same loss through its own class shard; the
        # gradient of a row is their sum, and each rank keeps the rows it contributed
        grad = grad.contiguous().clone()
        if dist.get_backend(ctx.group) == "nccl":
            out = torch.empty(
                (ctx.rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device
            )
            dist.reduce_scatter_tensor(out, grad, group=ctx.group)
            return out, None
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def all_gather_rows(tensor: Tensor, group: Any = None) -> Tensor:
    """`(N·B, ...)`: the `(B, ...)` tensors of all N ranks in rank order, differentiable.

    Every rank must pass the same shape. The backward returns to each rank the sum over
    ranks of the gradient of its own rows. Without a process group: `tensor` itself.
    """
    if _group_size(group) == 1:
        return tensor
    if not tensor.requires_grad:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts, dim=0)
    return _AllGatherRows.apply(tensor, group)


class _ShardedTargetLogProb(torch.autograd.Function):
    """log p_y over class-sharded logits; also sums `extras` over ranks (no gradient)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, local_labels: Tensor, extras: Tensor, group: Any
    ) -> tuple[Tensor, Tensor]:
        distributed = _group_size(group) > 1
        with torch.no_grad():
            row_max = logits.max(dim=1).values
            if distributed:
                dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            probs = (logits - row_max.unsqueeze(1)).exp_()  # (M, C_r), becomes softmax below
            owned = local_labels >= 0
            index = local_labels.clamp_min(0).unsqueeze(1)
            target = torch.where(
                owned, logits.gather(1, index).squeeze(1) - row_max, torch.zeros_like(row_max)
            )
            packed = torch.cat(
                [probs.sum(dim=1).unsqueeze(0), target.unsqueeze(0), extras.to(logits.dtype)]
            )
            if distributed:
                dist.all_reduce(packed, group=group)
            sum_exp, target = packed[0], packed[1]
            log_p_y = target - sum_exp.log()
            probs.div_(sum_exp.unsqueeze(1))
            summed = packed[2:].clone()
        ctx.save_for_backward(probs, local_labels)
        ctx.mark_non_differentiable(summed)
        return log_p_y, summed

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_log_p_y: Tensor, grad_extras: Tensor | None
    ) -> tuple[Tensor, None, None, None]:
        probs, local_labels = ctx.saved_tensors
        grad = probs * (-grad_log_p_y).unsqueeze(1)
        # + grad_log_p_y at each owned target; rows owned elsewhere add 0 to column 0
        # (a scatter of fixed size: no data-dependent shape, so no host sync)
        at_target = torch.where(local_labels >= 0, grad_log_p_y, 0.0).to(grad.dtype)
        grad.scatter_add_(1, local_labels.clamp_min(0).unsqueeze(1), at_target.unsqueeze(1))
        return grad, None, None, None


def sharded_target_log_prob(
    logits: Tensor, local_labels: Tensor, extras: Tensor | None = None, group: Any = None
) -> tuple[Tensor, Tensor]:
    """log softmax of the full (M, C) logits at the target, from this rank's (M, C_r) columns.

    `local_labels[i]` is the target's column in `logits` or -1 (another rank owns it).
    `extras` (k, M) are summed over the ranks alongside (for statistics). Returns
    `(log_p_y (M,), summed extras (k, M))`; without a process group it is the plain
    log-softmax. Computed in the logits' dtype (float32 or float64).
    """
    if extras is None:
        extras = logits.new_zeros((0, logits.shape[0]))
    return _ShardedTargetLogProb.apply(logits, local_labels, extras, group)


class ClassSharded(WholeRows):
    """The classes `[start, stop)` of `num_classes` on this rank of `group` (see the module doc).

    Without a process group (or with one rank) every method reduces to `WholeRows`'.
    """

    replicated = False  # each rank's shard is its own: DDP must not average it

    def __init__(self, num_classes: int, group: Any = None) -> None:
        self.group = group
        self.num_classes = num_classes
        self.world_size = _group_size(group)
        self.rank = dist.get_rank(group) if self.world_size > 1 else 0
        if num_classes < self.world_size:
            raise UserError(
                f"{num_classes} classes cannot be sharded over {self.world_size} ranks; "
                "use train.distributed: ddp"
            )
        self.start, self.stop = shard_bounds(num_classes, self.world_size, self.rank)

    def gather(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return all_gather_rows(embeddings, self.group), all_gather_rows(labels, self.group)

    def columns(self, labels: Tensor) -> Tensor:
        inside = (labels >= self.start) & (labels < self.stop)
        return torch.where(inside, labels - self.start, torch.full_like(labels, -1))

    def log_prob(
        self, logits: Tensor, columns: Tensor, terms: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        log_p_y, summed = sharded_target_log_prob(logits, columns, terms, self.group)
        return log_p_y, summed if terms is not None else None

    def full_rows(self, rows: Tensor, dst: int = 0) -> Tensor | None:
        """Every rank's `(C_r, ...)` rows stacked to `(C, ...)` in host memory on rank
        `dst` (None elsewhere). A collective: every rank must call it.

        Each rank sends its slice to `dst`, which receives them one at a time into one
        slice-sized device buffer and copies each to the host at once: `dst`'s device
        never holds more than two slices (at C = 2 M, d = 512 on 8 ranks, the whole head
        and each optimizer buffer gathered on the GPU would be ~12 GB more).
        """
        if self.world_size == 1:
            return rows.detach()
        longest = math.ceil(self.num_classes / self.world_size)
        padded = rows.detach().new_zeros((longest, *rows.shape[1:]))
        padded[: rows.shape[0]] = rows.detach()
        if self.rank != dst:
            dist.send(padded, dst=self._global_rank(dst), group=self.group)
            return None
        full = torch.empty((self.num_classes, *rows.shape[1:]), dtype=rows.dtype, device="cpu")
        received = torch.empty_like(padded)
        for rank in range(self.world_size):
            start, stop = shard_bounds(self.num_classes, self.world_size, rank)
            if rank != dst:
                dist.recv(received, src=self._global_rank(rank), group=self.group)
            full[start:stop].copy_((padded if rank == dst else received)[: stop - start])
        return full

    def _global_rank(self, rank: int) -> int:
        """The global rank of `rank` of this reduction's group."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def local_rows(self, full: Tensor) -> Tensor:
        return full[self.start : self.stop]

    def overflow_anywhere(self, found_inf: Tensor) -> Tensor:
        """The flag's maximum over the ranks: an inf in one rank's head slice is everyone's."""
        if self.world_size == 1:
            return found_inf
        found_inf = found_inf.clone()
        dist.all_reduce(found_inf, op=dist.ReduceOp.MAX, group=self.group)
        return found_inf

    def clip_grad_norm(
        self, backbone: Iterable[nn.Parameter], head: Iterable[nn.Parameter], max_norm: float
    ) -> Tensor:
        """Clip to the global norm: the head's squared norm is summed over the shards."""
        backbone, head = list(backbone), list(head)
        if self.world_size == 1:
            return super().clip_grad_norm(backbone, head, max_norm)
        head_sq = sum((p.grad.float().pow(2).sum() for p in head if p.grad is not None),
                      torch.zeros((), device=head[0].device))
        dist.all_reduce(head_sq, group=self.group)
        grads = [p.grad for p in backbone if p.grad is not None]
        total = (sum((g.float().pow(2).sum() for g in grads), head_sq.new_zeros(()))
                 + head_sq).sqrt()
        factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in [*backbone, *head]:
            if p.grad is not None:
                p.grad.mul_(factor.to(p.grad.dtype))
        return total


def _margin_template(name: str, num_classes: int, embedding_dim: int, **hp: Any) -> MarginHead:
    """The loss head for all C classes with its weight on the meta device (no memory)."""
    with torch.device("meta"):
        template = build_head(name, num_classes, embedding_dim, **hp)
    if not template.shardable:
        raise UserError(
            f"loss {name!r} cannot be class-sharded (train.distributed: sharded): its logits "
            "are not an elementwise function of the cosine matrix; use train.distributed: ddp"
        )
    return template  # type: ignore[return-value]


class ShardedHead(Head):
    """A margin head whose `(C, d)` weight is split by class over the ranks of `group`.

    `forward(embeddings (B, d), labels (B,)) -> scalar` is the mean loss over the global
    batch (the same value on every rank). `weight` is this rank's `(C_r, d)` shard of the
    classes `[shard_start, shard_stop)`; `full_state_dict()` gathers the full head and
    `load_full_state_dict()` takes this rank's rows of one. Without a process group (or
    with one rank) it is the plain head. `sample_rate < 1` turns on Partial FC.
    """

    shardable = True

    def __init__(
        self,
        name: str,
        num_classes: int,
        embedding_dim: int,
        *,
        group: Any = None,
        sample_rate: float = 1.0,
        seed: int = 0,
        **hyperparameters: Any,
    ) -> None:
        template = _margin_template(name, num_classes, embedding_dim, **hyperparameters)
        if not 0.0 < sample_rate <= 1.0:
            raise UserError(f"train.sample_rate must be in (0, 1], got {sample_rate!r}")
        reduction = ClassSharded(num_classes, group)
        generator = seeded_generator(int(seed) * 1_000_003 + reduction.start)
        super().__init__(
            template.name, num_classes, embedding_dim, template.hyperparameters,
            rows=reduction.stop - reduction.start, generator=generator, reduction=reduction,
        )
        # not a registered submodule: its meta weight must stay out of parameters()
        self._template = [template]
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.draws = 0  # Partial FC draws so far (`resume_at` restores it)
        self.shard_start, self.shard_stop = reduction.start, reduction.stop
        self.last_sampled: Tensor | None = None  # rows used by the last Partial FC step

    @property
    def template(self) -> MarginHead:
        """The full-size loss head (weight on the meta device) whose maths is reused."""
        return self._template[0]

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        return margin_loss(self, self.template, embeddings, labels)

    def transform(self, cos: Tensor, labels: Tensor) -> Tensor:
        """The loss's margin transform (same contract as `MarginHead.transform`)."""
        return self.template.transform(cos, labels)

    def resume_at(self, step: int) -> None:
        self.draws = step

    def select_centres(self, weight: Tensor, columns: Tensor) -> tuple[Tensor, Tensor]:
        """Partial FC: the sampled rows of this shard and the targets' columns among them."""
        chosen = self.sample_centres(columns) if self.sample_rate < 1.0 else None
        self.last_sampled = chosen
        if chosen is None:
            return weight, columns
        position = torch.full((weight.shape[0],), -1, dtype=columns.dtype, device=columns.device)
        position[chosen] = torch.arange(chosen.numel(), device=columns.device)
        owned = columns >= 0
        return weight[chosen], torch.where(owned, position[columns.clamp_min(0)], columns)

    def sample_centres(self, local_labels: Tensor) -> Tensor | None:
        """Partial FC: sorted shard rows to use this step (None = all of them).

        The rows of the classes in `local_labels` (>= 0) are always kept; other rows are
        drawn uniformly, max(ceil(sample_rate · C_r), min(C_r, M)) rows in all for M
        labels: a count known without looking at the labels (the batch cannot hold more
        than M classes), so the device never waits for the host.
        """
        local = self.weight.shape[0]
        count = max(math.ceil(self.sample_rate * local), min(local, local_labels.shape[0]))
        if not self.training or count >= local:
            return None
        generator = seeded_generator(
            (self.seed * 1_000_003 + self.shard_start) * 1_000_033 + self.draws,
            self.weight.device,
        )
        self.draws += 1
        score = torch.rand(local, generator=generator, device=self.weight.device)
        # one spare slot at the end takes the labels of other ranks' classes (-1)
        score = torch.cat([score, score.new_zeros(1)])
        slots = torch.where(local_labels >= 0, local_labels, local)
        score.index_fill_(0, slots, 2.0)  # above any uniform draw: positives come first
        return score[:local].topk(count).indices.sort().values

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, classes {self.shard_start}..{self.shard_stop - 1} of "
            f"{self.num_classes}, rank {self.reduction.rank}/{self.reduction.world_size}, "
            f"sample_rate={self.sample_rate:g}"
        )
