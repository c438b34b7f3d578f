"""Gradient accumulation under DDP: one gradient exchange per optimizer step, not per part."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
from gloo_helpers import join_gloo, spawn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from eqmcli.backbones import build_backbone
from eqmcli.data.transforms import to_model_input
from eqmcli.losses import build_head
from eqmcli.run.recipe import Recipe
from eqmcli.train.schedule import LrSchedule
from eqmcli.train.step import StepParts, build_optimizer, train_step

SIZE = (24, 24)
CLASSES = 5
BATCH = 8


def _counted(wrapper: DistributedDataParallel, counts: list[int]) -> DistributedDataParallel:
    """`wrapper` with its gradient all-reduce (averaging, DDP's default) counted per bucket."""
    def hook(state, bucket):  # type: ignore[no-untyped-def]  (DDP checks string annotations)
        counts.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)
    wrapper.register_comm_hook(None, hook)
    return wrapper


def _reference_gradients(backbone, head, images, labels, micro_batches: int) -> list[torch.Tensor]:
    """Each part's gradient summed on this rank without DDP, then averaged over the ranks."""
    for part_images, part_labels in zip(images.chunk(micro_batches), labels.chunk(micro_batches),
                                        strict=True):
        inputs = to_model_input(part_images, torch.device("cpu"), size=SIZE)
        (head(backbone(inputs), part_labels) / micro_batches).backward()
    grads = [p.grad.clone() for p in [*backbone.parameters(), *head.parameters()]]
    for grad in grads:
        dist.all_reduce(grad)
        grad /= dist.get_world_size()
    return grads


def _step_worker(rank: int, world: int, port: int, micro_batches: int, out: str) -> None:
    join_gloo(rank, world, port)
    torch.manual_seed(0)  # the same initial weights on every rank
    backbone = build_backbone("tiny", embedding_dim=8, input_size=SIZE)
    head = build_head("normface", CLASSES, 8)
    reference = _reference_gradients(
        copy.deepcopy(backbone), copy.deepcopy(head), *_batch(rank), micro_batches
    )
    counts: list[int] = []
    recipe = Recipe()
    parts = StepParts(
        backbone=backbone, head=head,
        optimizer=build_optimizer(recipe.optim, [*backbone.parameters(), *head.parameters()]),
        schedule=LrSchedule(recipe.optim, steps_per_epoch=1, total_steps=1),
        device=torch.device("cpu"), amp_dtype=None, channels_last=False, input_size=SIZE,
        micro_batches=micro_batches,
        forward_backbone=_counted(DistributedDataParallel(backbone), counts),
        forward_head=_counted(DistributedDataParallel(head), counts),
    )
    images, labels = _batch(rank)
    train_step(parts, images, labels, torch.zeros(BATCH, dtype=torch.bool), step=0)
    grads = [p.grad for p in [*backbone.parameters(), *head.parameters()]]
    torch.save({"exchanges": len(counts), "grads": grads, "reference": reference},
               Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's own uint8 images and labels (different on each rank)."""
    generator = torch.Generator().manual_seed(100 + rank)
    images = torch.randint(0, 256, (BATCH, 3, *SIZE), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, CLASSES, (BATCH,), generator=generator)


def _run(micro_batches: int, folder: Path) -> list[dict]:
    folder.mkdir()
    spawn(_step_worker, 2, micro_batches, str(folder))
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(2)]


def test_accumulated_parts_exchange_gradients_once_per_step(tmp_path: Path) -> None:
    single = _run(1, tmp_path / "one-part")
    accumulated = _run(4, tmp_path / "four-parts")
    for rank in range(2):
        assert accumulated[rank]["exchanges"] == single[rank]["exchanges"] >= 2  # both modules
    for result in accumulated:  # every part's gradient reached the one exchange
        for grad, expected in zip(result["grads"], result["reference"], strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
