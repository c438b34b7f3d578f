"""Helpers of the multi-process tests: N CPU processes joined by Gloo on a free port."""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(fn: Any, world: int, *args: Any) -> None:
    """Run fn(rank, world, port, *args) in `world` processes (torchrun's environment)."""
    # fork: the children share the imported modules (a spawn re-imports torch in each);
    # the meta device's kernels (the sharded head's template) load on first use, seconds
    torch.empty(1, device="meta").normal_()
    mp.start_processes(
        fn, args=(world, free_port(), *args), nprocs=world, join=True, start_method="fork"
    )


def join_gloo(rank: int, world: int, port: int) -> None:
    """Set torchrun's variables for `rank` and join a Gloo group of `world` processes."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
