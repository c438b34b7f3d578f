"""Issue 18's multi-rank faults, reproduced and checked on the CPU.

Multi-process cases run 2 Gloo ranks with the harness of `tests/distributed/test_distributed.py`;
GPU-count cases pretend CUDA GPUs exist (they fail before any GPU would be touched).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from gloo_helpers import join_gloo, spawn
from torch.utils._python_dispatch import TorchDispatchMode

from eqmcli.backbones import build_backbone
from eqmcli.data.loader import default_num_workers
from eqmcli.distributed import DistributedContext, ShardedHead, init_distributed
from eqmcli.errors import UserError
from eqmcli.run.recipe import OptimSection
from eqmcli.train.schedule import LrSchedule
from eqmcli.train.step import StepParts, build_optimizer, place_model, train_step

aten = torch.ops.aten


def torchrun_environment(
    monkeypatch: pytest.MonkeyPatch, *, world: int, local_rank: int, gpus: int
) -> None:
    """torchrun's variables for one rank, on a machine that says it has `gpus` GPUs."""
    for name, value in {"RANK": local_rank, "WORLD_SIZE": world, "LOCAL_RANK": local_rank,
                        "LOCAL_WORLD_SIZE": world}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


def test_fixed_cuda_device_with_several_ranks_is_refused(monkeypatch):
    torchrun_environment(monkeypatch, world=2, local_rank=1, gpus=2)
    with pytest.raises(UserError, match=r"'cuda:0' would put all 2 torchrun ranks on one GPU"):
        init_distributed("cuda:0")


def test_local_rank_beyond_the_gpu_count_is_one_sentence(monkeypatch):
    torchrun_environment(monkeypatch, world=4, local_rank=2, gpus=2)
    with pytest.raises(UserError, match="local rank 2 but this machine has 2 CUDA GPU"):
        init_distributed("cuda")


def test_default_loader_workers_are_divided_among_the_ranks_of_a_machine(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_num_workers(cpus=16) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_num_workers(cpus=16) == 1, "16 CPUs shared by 8 ranks: 2 each"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_num_workers(cpus=16) == 7


def test_process_group_timeout_comes_from_the_recipe(monkeypatch, tiny_recipe_path, tmp_path):
    from datetime import timedelta

    import torch.distributed as dist

    import eqmcli.train.trainer as trainer
    from eqmcli.run.recipe import load_recipe

    default = load_recipe(tiny_recipe_path).train.process_group_timeout_s
    assert default >= 30 * 60, "generous: rank 0 evaluates while the others wait"
    recipe = load_recipe(tiny_recipe_path, ["train.process_group_timeout_s=90"])

    def joined(device_text: str, mode: str, **kwargs: float) -> None:
        raise UserError(f"asked for {kwargs}")

    monkeypatch.setattr(trainer, "init_distributed", joined)
    with pytest.raises(UserError, match="'timeout_s': 90.0"):
        trainer.train(recipe, tmp_path / "run", progress=False)

    asked: dict = {}
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: asked.update(kwargs))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    torchrun_environment(monkeypatch, world=2, local_rank=0, gpus=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    init_distributed("cpu", timeout_s=90.0)
    assert asked["backend"] == "gloo" and asked["timeout"] == timedelta(seconds=90)


# ------------------------------------------------ fault 1: fp16 with a sharded head
FP16_STEPS, OVERFLOW_STEP = 3, 1


def _fp16_sharded_worker(rank: int, world: int, port: int, out: str) -> None:
    """Three fp16 training steps with a class-sharded head; at step 1 rank 1's head
    gradient holds an inf. Saves each rank's scale and backbone after every step."""
    join_gloo(rank, world, port)
    cpu = torch.device("cpu")
    context = DistributedContext(rank=rank, world_size=world, local_rank=rank, active=True,
                                 mode="sharded")
    torch.manual_seed(0)
    backbone = build_backbone("tiny", embedding_dim=16, input_size=(24, 24))
    head = ShardedHead("eqm", 8, 16, scale=16.0)
    place_model(backbone, head, cpu, channels_last=False)
    optim = OptimSection(lr=0.05)
    parts = StepParts(
        backbone=backbone, head=head,
        optimizer=build_optimizer(optim, [*backbone.parameters(), *head.parameters()]),
        schedule=LrSchedule(optim, FP16_STEPS, FP16_STEPS), device=cpu,
        amp_dtype=torch.float16, channels_last=False, input_size=(24, 24),
    )
    parts.forward_backbone = context.wrap_backbone(backbone, cpu)
    parts.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)  # no overflow of its own
    step_now = [0]
    if rank == 1:
        head.weight.register_hook(
            lambda grad: grad.clone().fill_(float("inf")) if step_now[0] == OVERFLOW_STEP
            else grad
        )
    generator = torch.Generator().manual_seed(100 + rank)
    history = []
    for step in range(FP16_STEPS):
        step_now[0] = step
        images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 8, (4,), generator=generator)
        train_step(parts, images, labels, torch.zeros(4, dtype=torch.bool), step)
        state = torch.cat([p.detach().flatten() for p in backbone.parameters()])
        history.append({"scale": parts.scaler.get_scale(), "backbone": state})
    everyone = [None] * world
    dist.all_gather_object(everyone, history)
    if rank == 0:
        torch.save(everyone, out)
    dist.destroy_process_group()


def test_fp16_overflow_in_one_ranks_head_slice_makes_every_rank_skip_the_step(tmp_path):
    out = tmp_path / "fp16.pt"
    spawn(_fp16_sharded_worker, 2, str(out))
    rank0, rank1 = torch.load(out)
    for step in range(FP16_STEPS):
        assert rank0[step]["scale"] == rank1[step]["scale"], f"scales differ after step {step}"
        torch.testing.assert_close(rank0[step]["backbone"], rank1[step]["backbone"],
                                   rtol=0, atol=0, msg=f"backbones differ after step {step}")
    before, after = rank0[OVERFLOW_STEP - 1], rank0[OVERFLOW_STEP]
    assert after["scale"] == before["scale"] / 2, "the overflow halved every rank's scale"
    assert torch.equal(after["backbone"], before["backbone"]), "and every rank skipped the step"


# ------------------------------------------------ fault 2: one rank's error, no hang
FAILING_RANK_SCRIPT = '''
import os, sys, time
import eqmcli.train.trainer as trainer
from eqmcli.cli import main
from eqmcli.errors import UserError

real_step = trainer.train_step

def train_step(parts, images, labels, flip, step, **kwargs):
    if os.environ["RANK"] == "1" and step == 1:  # as a corrupt image in rank 1's slice would
        print(f"FAILING AT {time.time()}", flush=True)
        raise UserError("rank 1 could not decode /data/bad.jpg")
    return real_step(parts, images, labels, flip, step, **kwargs)

trainer.train_step = train_step
sys.argv = ["eqm", *sys.argv[1:]]
main()
'''


@pytest.mark.slow  # ~20 s on a 2-core CPU: torchrun starts two Python processes
def test_one_ranks_error_reaches_the_user_and_ends_the_job_at_once(tiny_recipe_path, tmp_path):
    import os
    import re
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK_SCRIPT)
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    timeout_s = 60  # the process-group timeout a barrier on the error path would wait out
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(script), "train", str(tiny_recipe_path), "--out", str(tmp_path / "run"),
        "--no-progress", "--set", "train.distributed=sharded", "--set", "eval.every_epochs=0",
        "--set", f"train.process_group_timeout_s={timeout_s}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    ended = time.time()
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "rank 1 could not decode /data/bad.jpg" in output, output[-3000:]
    failed_at = float(re.search(r"FAILING AT ([0-9.]+)", output).group(1))
    assert ended - failed_at < timeout_s / 3, f"the job took {ended - failed_at:.0f} s to end"


# ------------------------------------------------ fault 4: no host syncs in the head
class FailOnHostSync(TorchDispatchMode):
    """Raises on every op whose result's size or value the host must read from the device:
    `.item()`, nonzero, unique, boolean-mask indexing (a CUDA stream stalls on each)."""

    DATA_DEPENDENT = {
        aten.nonzero, aten._local_scalar_dense, aten._unique2, aten.unique_dim,
        aten.unique_consecutive, aten.masked_select, aten.is_nonzero, aten.equal,
    }
    INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        op = func.overloadpacket
        masks = op in self.INDEXING and any(
            index is not None and index.dtype == torch.bool for index in args[1]
        )
        if op in self.DATA_DEPENDENT or masks:
            raise AssertionError(f"{func} makes the host wait for the device")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("sample_rate", [1.0, 0.25])
def test_sharded_head_step_makes_no_host_sync(sample_rate):
    head = ShardedHead("eqm", 64, 16, sample_rate=sample_rate)
    head.collect_stats = False  # statistics are read on logging steps only
    embeddings = torch.randn(8, 16, requires_grad=True)
    labels = torch.tensor([0, 3, 3, 17, 40, 63, 63, 5])
    with FailOnHostSync():
        head(embeddings, labels).backward()
    assert head.weight.grad is not None and embeddings.grad is not None
    if sample_rate < 1.0:
        assert set(labels.tolist()) <= set(head.last_sampled.tolist())
        assert len(head.last_sampled) == 16, "ceil(0.25 x 64) rows, known in advance"


# ------------------------------------- fault 5: checkpoint gathers land on the host
GATHER_CLASSES, GATHER_DIM = 9, 3  # shards of 5 and 4 rows


class RecordTensors(TorchDispatchMode):
    """Records (op, rows, device asked for) of every tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[tuple[str, int, str | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        device = (kwargs or {}).get("device")
        for value in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                self.made.append((str(func), value.shape[0], None if device is None
                                  else str(device)))
        return out


def _gather_worker(rank: int, world: int, port: int, out: str) -> None:
    join_gloo(rank, world, port)
    head = ShardedHead("eqm", GATHER_CLASSES, GATHER_DIM)
    with torch.no_grad():
        head.weight.copy_(torch.arange(head.shard_start, head.shard_stop).unsqueeze(1)
                          * torch.ones(GATHER_DIM))
    recorder = RecordTensors()
    with recorder:
        full = head.reduction.full_rows(head.weight)
    if rank == 0:
        torch.save({"full": full, "made": recorder.made}, out)
    dist.destroy_process_group()


def test_checkpoint_gather_moves_each_slice_to_the_host(tmp_path):
    out = tmp_path / "gather.pt"
    spawn(_gather_worker, 2, str(out))
    found = torch.load(out)
    full = found["full"]
    assert full.device.type == "cpu"
    assert torch.equal(full[:, 0], torch.arange(GATHER_CLASSES, dtype=full.dtype))
    slice_rows = 5  # the larger shard: the most rows any device buffer may hold
    whole = [made for made in found["made"] if made[1] > slice_rows]
    assert whole == [("aten.empty.memory_format", GATHER_CLASSES, "cpu")], (
        "only the host tensor holds every class; on rank 0's device, one slice at a time"
    )
