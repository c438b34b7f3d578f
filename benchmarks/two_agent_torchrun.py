"""Multi-node launch proven on one machine: two torchrun agents vs one.

Trains the same tiny recipe (8 synthetic identities, 24 px, one epoch, class-sharded head,
Gloo on the CPU) twice with 2 ranks:

- one agent: `torchrun --nnodes 1 --nproc-per-node 2`;
- two agents, as on two machines: `torchrun --nnodes 2 --nproc-per-node 1` started twice,
  meeting through a c10d rendezvous on localhost (what `srun torchrun ...` does on Slurm,
  docs/distributed.md);

then compares the two runs' final checkpoints tensor by tensor and their verification
accuracy. Prints one line per quantity and exits 1 when they differ.

    python benchmarks/two_agent_torchrun.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_RECIPE: dict[str, Any] = {
    "name": "two-agents",
    "seed": 3,
    "data": {
        "train": {"kind": "synthetic", "num_classes": 8, "min_images": 6, "max_images": 20,
                  "image_size": 24, "test_images_per_class": 2,
                  "verification_identities": 10, "verification_folds": 10,
                  "verification_pairs_per_fold": 4},
        "num_workers": 0,
    },
    "model": {"backbone": "tiny", "embedding_dim": 16},
    "loss": {"name": "eqm", "scale": 16.0},
    "optim": {"lr": 0.05, "schedule": "cosine", "warmup_epochs": 0.5},
    "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "log_every": 1,
              "distributed": "sharded", "process_group_timeout_s": 120},
    "eval": {"every_epochs": 1, "batch_size": 64},
}


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nnodes: int, nproc: int, job: str, port: int, recipe: Path, out: Path) -> list[str]:
    """The torchrun command of one agent: c10d rendezvous on localhost:`port`."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
        "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", job,
        "-m", "eqmcli", "train", str(recipe), "--out", str(out), "--no-progress",
    ]


def run_agents(commands: list[list[str]], log: Path) -> float:
    """Start the agents together, wait for all; seconds taken. `RuntimeError` on a failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    with log.open("w") as sink:
        agents = [subprocess.Popen(c, stdout=sink, stderr=subprocess.STDOUT, env=env)
                  for c in commands]
        codes = [agent.wait(timeout=600) for agent in agents]
    if any(codes):
        raise RuntimeError(f"torchrun exited with {codes}; see {log}")
    return time.perf_counter() - started


def largest_difference(a: Any, b: Any) -> float:
    """max |a - b| over every tensor of two nested checkpoint structures (inf: unlike)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return float("inf")
        return max((largest_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return float("inf")
        return max((largest_difference(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    return 0.0 if a == b else float("inf")


def compare_runs(one: Path, two: Path) -> dict[str, Any]:
    """The two runs' checkpoints and accuracies side by side."""
    checkpoints = [torch.load(run / "checkpoints" / "last.pt", weights_only=True)
                   for run in (one, two)]
    accuracy = [json.loads((run / "eval" / "synthetic.json").read_text())["accuracy"]
                for run in (one, two)]
    return {
        "world_size": [c["world_size"] for c in checkpoints],
        "steps": [c["step"] for c in checkpoints],
        "backbone_max_abs_difference": largest_difference(*(c["backbone"] for c in checkpoints)),
        "head_max_abs_difference": largest_difference(*(c["head"] for c in checkpoints)),
        "optimizer_max_abs_difference": largest_difference(
            *(c["optimizer"]["state"] for c in checkpoints)
        ),
        "accuracy": accuracy,
    }


def prove(out: Path) -> dict[str, Any]:
    """Train with one agent of 2 ranks and with two agents of 1 rank; compare (see above)."""
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    one, two = out / "one-agent", out / "two-agents"
    port = free_port()
    one_s = run_agents([torchrun(1, 2, "one", port, recipe, one)], out / "one-agent.log")
    port = free_port()
    two_s = run_agents([torchrun(2, 1, "two", port, recipe, two) for _ in range(2)],
                       out / "two-agents.log")
    return {**compare_runs(one, two), "seconds": [round(one_s, 1), round(two_s, 1)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        found = prove(args.out or Path(scratch))
    for key, value in found.items():
        print(f"{key:30s} {value}")
    same = (found["backbone_max_abs_difference"] == found["head_max_abs_difference"]
            == found["optimizer_max_abs_difference"] == 0.0
            and found["accuracy"][0] == found["accuracy"][1])
    print("two agents = one agent" if same else "the runs DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
