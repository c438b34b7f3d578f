"""Loss heads: the cosine classifier, EqM and the paper's baselines (docs/reference.md §1).

    head = build_head("eqm", num_classes=C, embedding_dim=d, scale=64.0, t1=0.5, t2=0.1)
    loss = head(embeddings, labels)     # scalar, mean over the batch
    head.last_stats                     # dict of floats for logging

Elementwise margin heads also expose `transform(cos, labels) -> logits` and
`sample_loss(log_p_y)`, the pieces a class-sharded head reuses; where the classes live
(whole rows here, class shards in `eqmcli.distributed`) is the head's `reduction`.
"""

from __future__ import annotations

from typing import Any

from eqmcli.losses.base import (
    CosineClassifier,
    Head,
    MarginHead,
    cosine_matrix,
    margin_loss,
    replace_target,
    target_cosine,
)
from eqmcli.losses.hyperparameters import (
    LOSS_NAMES,
    canonical_name,
    cosine_thresholds,
    resolve_hyperparameters,
)
from eqmcli.losses.margins import (
    ArcFaceHead,
    CombinedMarginHead,
    CosFaceHead,
    EqMHead,
    FocalHead,
    GASoftmaxHead,
    NormFaceHead,
    eqm_stats,
)
from eqmcli.losses.reduction import WholeRows, target_log_prob
from eqmcli.losses.unnormalized import SoftmaxHead, SphereFaceHead, a_softmax_psi

HEAD_CLASSES: dict[str, type[Head]] = {
    "softmax": SoftmaxHead,
    "normface": NormFaceHead,
    "sphereface": SphereFaceHead,
    "ga-softmax": GASoftmaxHead,
    "arcface": ArcFaceHead,
    "cosface": CosFaceHead,
    "am": CosFaceHead,
    "combined": CombinedMarginHead,
    "focal": FocalHead,
    "eqm": EqMHead,
}
"""Canonical loss name -> head class (names resolve through `canonical_name`)."""


def build_head(name: str, num_classes: int, embedding_dim: int, **hyperparameters: Any) -> Head:
    """The loss head `name` over `num_classes` classes of `embedding_dim`-d embeddings.

    Unset hyperparameters take their defaults; bad ones raise `UserError` naming them.
    `head.name` is the name as given (e.g. `am`), lower-cased.
    """
    resolved = resolve_hyperparameters(name, **hyperparameters)
    head_class = HEAD_CLASSES[canonical_name(name)]
    shown = str(name).strip().lower().replace("_", "-")
    return head_class(shown, num_classes, embedding_dim, **resolved)


__all__ = [
    "HEAD_CLASSES",
    "LOSS_NAMES",
    "ArcFaceHead",
    "CombinedMarginHead",
    "CosFaceHead",
    "CosineClassifier",
    "EqMHead",
    "FocalHead",
    "GASoftmaxHead",
    "Head",
    "MarginHead",
    "NormFaceHead",
    "SoftmaxHead",
    "SphereFaceHead",
    "WholeRows",
    "a_softmax_psi",
    "build_head",
    "canonical_name",
    "cosine_thresholds",
    "cosine_matrix",
    "eqm_stats",
    "margin_loss",
    "replace_target",
    "resolve_hyperparameters",
    "target_cosine",
    "target_log_prob",
]
