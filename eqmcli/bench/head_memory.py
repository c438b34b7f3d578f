"""Per-rank memory of the class-sharded head (`eqm bench head-memory`), on the CPU with Gloo.

For each world size N, N processes each build a `ShardedHead` over C classes of d-dim
embeddings, run one training step (forward, backward, SGD with momentum) on a global
batch of B embeddings (B/N per rank) and report the bytes this rank actually holds:

- weight:      the centre shard parameter, C/N × d float32
- momentum:    the SGD momentum buffer the optimizer allocated for it
- gradient:    the weight's .grad
- activations: every distinct tensor storage (other than the weight) that autograd saved
  for the backward during the head's forward: the cosines and the softmax (B × C/N
  each), the "logits for a batch"

Memory is counted from the tensors themselves (numel × element size), so the numbers are
exact and do not depend on the allocator. Each row is the rank holding the most classes.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eqmcli.distributed import ShardedHead
from eqmcli.errors import UserError


@dataclass(frozen=True)
class HeadMemoryRow:
    """One world size: classes on the largest shard and its bytes (see the module doc)."""

    world_size: int
    classes: int
    weight_bytes: int
    momentum_bytes: int
    grad_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.momentum_bytes + self.grad_bytes + self.activation_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _one_step(classes: int, dim: int, local_batch: int, rank: int) -> list[int]:
    """Build this rank's shard, take one SGD step, return [classes, weight, momentum, grad,
    activations] in bytes."""
    head = ShardedHead("eqm", classes, dim, seed=0)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(local_batch, dim, generator=generator, requires_grad=True)
    labels = torch.randint(0, classes, (local_batch,), generator=generator)
    saved: dict[int, int] = {}
    parameter_storage = head.weight.untyped_storage().data_ptr()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() != parameter_storage:  # the weight itself is counted apart
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = head(x, labels)
    loss.backward()
    optimizer.step()
    momentum = optimizer.state[head.weight]["momentum_buffer"]
    return [head.weight.shape[0], _bytes(head.weight), _bytes(momentum),
            _bytes(head.weight.grad), sum(saved.values())]


def _worker(rank: int, world: int, port: int, classes: int, dim: int, batch: int,
            out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    row = torch.tensor(_one_step(classes, dim, batch // world, rank), dtype=torch.float64)
    rows = [row]
    if world > 1:
        rows = [torch.empty_like(row) for _ in range(world)]
        dist.all_gather(rows, row)
        dist.destroy_process_group()
    if rank == 0:
        torch.save(torch.stack(rows), out)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_head_memory(
    classes: int = 85_742, dim: int = 512, batch: int = 512,
    world_sizes: tuple[int, ...] = (1, 2, 4),
) -> list[HeadMemoryRow]:
    """One row per world size (processes forked on this machine, Gloo over localhost)."""
    if classes < 2 or dim < 1 or min(world_sizes, default=0) < 1:
        raise UserError("head-memory needs classes >= 2, dim >= 1 and world sizes >= 1")
    if any(batch < n or classes < n for n in world_sizes):
        raise UserError(f"batch {batch} and classes {classes} must be >= every world size")
    rows = []
    for world in world_sizes:
        with tempfile.TemporaryDirectory() as folder:
            out = str(Path(folder) / "rows.pt")
            mp.start_processes(_worker, args=(world, _free_port(), classes, dim, batch, out),
                               nprocs=world, join=True, start_method="fork")
            measured = torch.load(out)
        worst = measured[measured[:, 0].argmax()].long().tolist()
        rows.append(HeadMemoryRow(world, *worst))
    return rows
