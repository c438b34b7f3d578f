"""Per-rank memory of the class-sharded head, measured on the CPU with Gloo.

For each world size N, N processes each build a `ShardedHead` over C classes of d-dim
embeddings, run one training step (forward, backward, SGD with momentum) on a global
batch of B embeddings (B/N per rank) and report the bytes this rank actually holds:

- weight:     the centre shard parameter, C/N × d float32
- momentum:   the SGD momentum buffer the optimizer allocated for it
- gradient:   the weight's .grad
- activations: every distinct tensor storage (other than the weight) that autograd saved
  for the backward during the head's forward: the L2-normalized weight copy (C/N × d),
  the cosines and the softmax (B × C/N each) — the "logits for a batch"

Usage:

    python benchmarks/head_memory.py                       # C = 85,742, d = 512, N = 1,2,4
    python benchmarks/head_memory.py --classes 10000 --world-sizes 1,2

Memory is counted from the tensors themselves (numel × element size), so the numbers
are exact and do not depend on the allocator.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MIB = 2**20


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _worker(
    rank: int, world: int, port: int, classes: int, dim: int, batch: int, out: str
) -> None:
    from eqmcli.distributed import ShardedHead

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    head = ShardedHead("eqm", classes, dim, seed=0)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(rank)
    local = batch // world
    x = torch.randn(local, dim, generator=generator, requires_grad=True)
    labels = torch.randint(0, classes, (local,), generator=generator)

    saved: dict[int, int] = {}

    parameter_storage = head.weight.untyped_storage().data_ptr()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() != parameter_storage:  # the weight itself is counted above
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = head(x, labels)
    loss.backward()
    optimizer.step()
    momentum = optimizer.state[head.weight]["momentum_buffer"]
    row = torch.tensor(
        [
            head.weight.shape[0],
            _bytes(head.weight),
            _bytes(momentum),
            _bytes(head.weight.grad),
            sum(saved.values()),
        ],
        dtype=torch.float64,
    )
    if world > 1:
        rows = [torch.empty_like(row) for _ in range(world)]
        dist.all_gather(rows, row)
        dist.destroy_process_group()
    else:
        rows = [row]
    if rank == 0:
        torch.save(torch.stack(rows), out)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(classes: int, dim: int, batch: int, world: int) -> torch.Tensor:
    """(world, 5) rows: classes held, weight, momentum, gradient, activation bytes."""
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "rows.pt")
        mp.start_processes(
            _worker, args=(world, _free_port(), classes, dim, batch, out), nprocs=world,
            join=True, start_method="fork",
        )
        return torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=85_742)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=512, help="global batch (all ranks)")
    parser.add_argument("--world-sizes", default="1,2,4")
    args = parser.parse_args()
    sizes = [int(n) for n in args.world_sizes.split(",")]
    print(
        f"C = {args.classes:,} classes, d = {args.dim}, global batch {args.batch}, fp32; "
        "per-rank MiB on the rank with the largest shard"
    )
    header = f"{'N':>3} {'classes':>8} {'weight':>9} {'momentum':>9} {'grad':>9} " \
             f"{'activ.':>9} {'total':>9} {'x N=1':>7}"
    print(header)
    first_total = None
    for world in sizes:
        rows = measure(args.classes, args.dim, args.batch, world)
        worst = rows[rows[:, 0].argmax()]
        total = float(worst[1:].sum())
        first_total = first_total or total * sizes[0]
        print(
            f"{world:>3} {int(worst[0]):>8,} {worst[1] / MIB:>9.1f} {worst[2] / MIB:>9.1f} "
            f"{worst[3] / MIB:>9.1f} {worst[4] / MIB:>9.1f} {total / MIB:>9.1f} "
            f"{total / first_total:>7.3f}"
        )


if __name__ == "__main__":
    main()
