"""``model.init_from``: a new run starts from another run's weights (fine-tuning).

The backbone's tensors are copied by name (every name and shape checked). The head is new:

- ``model.init_head: false`` (default): randomly initialized, as in a run from scratch;
- ``model.init_head: true``: the source's class centres, which needs the source head's class
  count and embedding size to match the new run's;
- ``model.init_head: imprint``: each class centre is the normalized mean embedding of that
  class's training images under the loaded backbone ("imprinted weights", Qi, Brown and
  Lowe, CVPR 2018), so training starts from centres that already fit the features: one
  inference pass over the training set before the first step.

Resuming a run never comes here: the run's own checkpoint restores the full state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eqmcli.analysis.study import dataset_labels
from eqmcli.data import TrainData
from eqmcli.errors import UserError
from eqmcli.evaluation.features import extract_embeddings
from eqmcli.interop.tensors import remap_tensors
from eqmcli.run.checkpoint import load_checkpoint
from eqmcli.run.recipe import ModelSection
from eqmcli.run.rundir import find_checkpoint, recipe_from_state

HeadLoader = Callable[[nn.Module, dict[str, torch.Tensor]], None]


@dataclass
class PretrainedStart:
    """Where a run's initial weights came from; ``head``: "new", "loaded" or "imprinted"."""

    checkpoint: Path
    backbone_tensors: int
    head: str


def _load_into(head: nn.Module, state: dict[str, torch.Tensor]) -> None:
    head.load_state_dict(state)


def initialize_from(
    model: ModelSection,
    backbone: nn.Module,
    head: nn.Module,
    data: TrainData,
    *,
    input_size: tuple[int, int],
    device: torch.device,
    load_head: HeadLoader = _load_into,
) -> PretrainedStart | None:
    """Load ``model.init_from``'s backbone into a new run's ``backbone`` and set up ``head``
    as ``model.init_head`` says (see the module docstring); None when ``init_from`` is unset.

    ``data``: the new run's training data; ``input_size`` (H, W) pixels and ``device`` are
    used to embed it for ``imprint``. ``load_head(head, {"weight": (C, d), ...})`` loads a full
    head state (a sharded head takes its rows); other head buffers keep their fresh values.
    A missing, extra or differently shaped tensor is a `UserError` naming it.
    """
    if model.init_from is None:
        return None
    checkpoint = find_checkpoint(model.init_from)
    state = load_checkpoint(checkpoint)
    source = f"model.init_from {checkpoint}"
    theirs = recipe_from_state(state, str(checkpoint)).model.backbone
    if theirs != model.backbone:
        raise UserError(f"{source} holds a {theirs} backbone; model.backbone is {model.backbone}")
    expected = backbone.state_dict()
    tensors = remap_tensors(
        state["backbone"], {name: name for name in expected}, expected,
        source_name=source,
        target_name=f"the recipe's {model.backbone} backbone ({model.embedding_dim}-d)",
    )
    backbone.load_state_dict(tensors)
    if model.init_head is False:
        return PretrainedStart(checkpoint, len(tensors), "new")
    if model.init_head == "imprint":
        weight = imprinted_centres(backbone, data, input_size=input_size, device=device)
    else:
        weight = _source_centres(state, source, (data.num_classes, model.embedding_dim))
    fresh = {name: value for name, value in head.state_dict().items() if name != "weight"}
    load_head(head, {**fresh, "weight": weight})
    return PretrainedStart(
        checkpoint, len(tensors), "imprinted" if model.init_head == "imprint" else "loaded"
    )


def _source_centres(state: dict, source: str, wanted: tuple[int, int]) -> torch.Tensor:
    weight = (state.get("head") or {}).get("weight")
    if not isinstance(weight, torch.Tensor):
        raise UserError(f"model.init_head is true but {source} has no head to load")
    if tuple(weight.shape) != wanted:
        raise UserError(
            f"{source}: tensor 'head.weight' has shape {tuple(weight.shape)} but the new run's "
            f"head needs {wanted} (classes, embedding_dim); set model.init_head to false or "
            "imprint for a new head"
        )
    return weight.float()


def imprinted_centres(
    backbone: nn.Module,
    data: TrainData,
    *,
    input_size: tuple[int, int],
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """(C, d) float32 on the CPU: each class's normalized mean of L2-normalized embeddings
    (the backbone is moved to ``device``)."""
    embeddings = extract_embeddings(
        backbone.to(device), data.dataset, batch_size=batch_size, device=device,
        input_size=input_size, flip=False, progress=False, description="imprinting centres",
    ).plain
    labels = torch.as_tensor(dataset_labels(data.dataset), dtype=torch.long)
    sums = torch.zeros((data.num_classes, embeddings.shape[1])).index_add_(0, labels, embeddings)
    empty = torch.nonzero(sums.norm(dim=1) == 0).flatten()
    if empty.numel():
        raise UserError(
            f"model.init_head: imprint needs images of every class; class {int(empty[0])} has none"
        )
    return F.normalize(sums, dim=1)
