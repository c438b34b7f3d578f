"""How a head's softmax and statistics are reduced over the classes: the pluggable part.

A margin head is `cos = x̂ Ŵᵀ -> transform -> log-softmax at the target -> loss`. Only
the log-softmax (and the per-sample statistics) depend on where the classes live:

- `WholeRows` (this module): every class of the row is on this device, the log-softmax is
  the ordinary one, nothing is communicated. Single process, or DDP with a replicated head.
- `eqmcli.distributed.sharded_head.ClassSharded`: each rank holds a contiguous class range;
  the batch is all-gathered and the log-softmax and statistics are all-reduced.

A reduction also knows how to turn this device's rows of a per-class tensor (the weight,
an optimizer buffer) into the rows of all classes and back (checkpoints are always the
full head), and how to clip gradients by their global norm. Nothing outside these two
classes asks which kind of head it has.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def wide(tensor: Tensor) -> Tensor:
    """`tensor` in float32, or unchanged when it already is float32/float64."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.float()


def target_log_prob(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[i, labels[i]] per sample, shape (B,), computed in float32."""
    return -F.cross_entropy(wide(logits), labels, reduction="none")


class WholeRows:
    """Every class on this device: the plain log-softmax over whole rows."""

    #: DDP may wrap a head with this reduction (its gradients are averaged over ranks)
    replicated = True

    def gather(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The batch the classes are scored against: this device's own."""
        return embeddings, labels

    def columns(self, labels: Tensor) -> Tensor:
        """Global labels -> columns of this device's weight (-1: the class lives elsewhere)."""
        return labels

    def log_prob(
        self, logits: Tensor, columns: Tensor, terms: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """(log p_y per sample (B,), per-sample statistic terms (k, B) summed over devices)."""
        return target_log_prob(logits, columns), terms

    def full_rows(self, rows: Tensor) -> Tensor | None:
        """This device's `(C_local, ...)` rows -> the `(C, ...)` rows of every class."""
        return rows.detach()

    def local_rows(self, full: Tensor) -> Tensor:
        """The `(C, ...)` rows of every class -> this device's rows."""
        return full

    def clip_grad_norm(
        self, backbone: Iterable[nn.Parameter], head: Iterable[nn.Parameter], max_norm: float
    ) -> Tensor:
        """Scale every gradient so their global L2 norm is at most `max_norm`; returns it."""
        return nn.utils.clip_grad_norm_([*backbone, *head], max_norm)

    def overflow_anywhere(self, found_inf: Tensor) -> Tensor:
        """A GradScaler's inf/NaN flag (0-d float) -> 1 where any device holding part of
        the head found one: here this device's own flag (its gradients are all here)."""
        return found_inf
