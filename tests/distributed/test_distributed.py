"""The class-sharded head and torchrun-style training, on the CPU with Gloo.

Multi-process tests spawn 2-3 processes with `torch.multiprocessing` on a free port; the
workers save what they computed and the test compares it with the single-process head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import yaml
from gloo_helpers import join_gloo, spawn

from eqmcli.distributed import ShardedHead, shard_bounds
from eqmcli.errors import UserError
from eqmcli.losses import build_head
from eqmcli.train.run_state import rescale_resumed_step

SHARDABLE = {
    "normface": {},
    "ga-softmax": {},
    "arcface": {},
    "cosface": {},
    "am": {},
    "focal": {},
    "eqm": {},
    "combined": {"scale": 32.0, "m1": 1.2, "m2": 0.3, "m3": 0.1},  # all three margins at once
    "eqm-loose": {"scale": 16.0, "t1": 0.9, "t2": 0.7},  # hard and easy, calm and violating
}
CLASSES, DIM, PER_RANK = 50, 8, 5  # 50 classes: uneven shards for 3 ranks (17, 17, 16),
# each larger than the global batch of 15 (so Partial FC at 0.5 leaves centres out)


def problem(world: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global embeddings (N·B, d), labels (N·B,) and centres (C, d) in float64."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(world * PER_RANK, DIM, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (world * PER_RANK,), generator=generator)
    weight = torch.randn(CLASSES, DIM, generator=generator, dtype=torch.float64)
    # pull some embeddings onto their centres so both margin regimes occur
    x[::2] = weight[labels[::2]] * 3 + 0.3 * x[::2]
    return x, labels, weight


def loss_kwargs(key: str) -> tuple[str, dict[str, float]]:
    return key.split("-loose")[0], SHARDABLE[key]


def _sharded_worker(rank: int, world: int, port: int, out: str) -> None:
    join_gloo(rank, world, port)
    x, labels, weight = problem(world)
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    results: dict[tuple[str, float], dict[str, Any]] = {}
    for sample_rate in (1.0, 0.5):
        for key in SHARDABLE:
            name, hp = loss_kwargs(key)
            head = ShardedHead(name, CLASSES, DIM, sample_rate=sample_rate, seed=5, **hp)
            head = head.double()
            head.load_full_state_dict({"weight": weight})
            local_x = x[rows].clone().requires_grad_(True)
            loss = head(local_x, labels[rows])
            loss.backward()
            x_grad = [torch.empty_like(local_x) for _ in range(world)]
            dist.all_gather(x_grad, local_x.grad)
            used = torch.ones(head.weight.shape[0], dtype=torch.bool)
            if head.last_sampled is not None:
                used = torch.zeros_like(used).index_fill_(0, head.last_sampled, True)
            results[key, sample_rate] = {
                "loss": loss.detach(), "x_grad": torch.cat(x_grad),
                "w_grad": head.reduction.full_rows(head.weight.grad), "stats": head.last_stats,
                "chosen": head.reduction.full_rows(used),
            }
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


WORLD = 3  # 11 classes over 3 ranks: shards of 4, 4 and 3


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What 3 Gloo processes computed for every shardable loss, at sample rates 1 and 0.5."""
    out = tmp_path_factory.mktemp("sharded") / "results.pt"
    spawn(_sharded_worker, WORLD, str(out))
    return torch.load(out)


def reference(key: str, x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
              columns: torch.Tensor | None = None) -> dict[str, Any]:
    """Loss and gradients of the single-process head (optionally over a column subset)."""
    name, hp = loss_kwargs(key)
    columns = torch.arange(CLASSES) if columns is None else columns
    head = build_head(name, len(columns), DIM, **hp).double()
    remap = torch.full((CLASSES,), -1, dtype=torch.long)
    remap[columns] = torch.arange(len(columns))
    with torch.no_grad():
        head.weight.copy_(weight[columns])
    x = x.clone().requires_grad_(True)
    loss = head(x, remap[labels])
    loss.backward()
    w_grad = torch.zeros_like(weight)
    w_grad[columns] = head.weight.grad
    return {"loss": loss.detach(), "x_grad": x.grad, "w_grad": w_grad, "stats": head.last_stats}


def test_sharded_loss_and_gradients_equal_the_single_process_head(sharded_results):
    x, labels, weight = problem(WORLD)
    for key in SHARDABLE:
        got, want = sharded_results[key, 1.0], reference(key, x, labels, weight)
        torch.testing.assert_close(got["loss"], want["loss"], atol=1e-5, rtol=0, msg=key)
        torch.testing.assert_close(got["x_grad"], want["x_grad"], atol=1e-5, rtol=0, msg=key)
        torch.testing.assert_close(got["w_grad"], want["w_grad"], atol=1e-5, rtol=0, msg=key)
        assert got["w_grad"].abs().sum() > 0 and got["chosen"].all()
        assert got["stats"].keys() == want["stats"].keys(), key
        for stat, value in want["stats"].items():
            assert got["stats"][stat] == pytest.approx(value, abs=1e-5), (key, stat)
    eqm = sharded_results["eqm-loose", 1.0]["stats"]
    assert 0 < eqm["hard_fraction"] < 1 and 0 < eqm["inter_violation_fraction"] < 1


def test_partial_fc_uses_the_sampled_centres_exactly(sharded_results):
    x, labels, weight = problem(WORLD)
    for key in SHARDABLE:
        got = sharded_results[key, 0.5]
        chosen = got["chosen"]
        assert chosen[labels].all(), "every positive centre is kept"
        assert chosen.sum() < CLASSES, "some negatives are left out"
        want = reference(key, x, labels, weight, columns=chosen.nonzero().squeeze(1))
        torch.testing.assert_close(got["loss"], want["loss"], atol=1e-5, rtol=0, msg=key)
        torch.testing.assert_close(got["x_grad"], want["x_grad"], atol=1e-5, rtol=0, msg=key)
        torch.testing.assert_close(got["w_grad"], want["w_grad"], atol=1e-5, rtol=0, msg=key)
        assert got["w_grad"][~chosen].abs().sum() == 0


def test_partial_fc_at_rate_one_is_the_sharded_head():
    x, labels, weight = problem(1)
    losses = []
    for rate in (1.0, 1.0 - 1e-9):  # the second takes the sampling path, keeping every centre
        head = ShardedHead("eqm", CLASSES, DIM, sample_rate=rate).double()
        head.load_full_state_dict({"weight": weight})
        losses.append(head(x, labels))
    torch.testing.assert_close(losses[0], losses[1], atol=1e-12, rtol=0)


def test_partial_fc_draws_are_deterministic_and_keep_positives():
    def draws() -> list[torch.Tensor]:
        head = ShardedHead("eqm", 100, DIM, sample_rate=0.1, seed=3)
        labels = torch.tensor([0, 5, 50, 99, 99])
        out = []
        for _ in range(3):
            head(torch.randn(5, DIM), labels)
            out.append(head.last_sampled)
        return out

    first, second = draws(), draws()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1]), "each step draws anew"
    assert all(set(d.tolist()) >= {0, 5, 50, 99} and len(d) == 10 for d in first)


def test_shard_bounds_cover_every_class_once():
    for classes, world in [(11, 2), (11, 3), (12, 4), (4, 4), (85_742, 8)]:
        bounds = [shard_bounds(classes, world, r) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == classes
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("name", ["softmax", "sphereface"])
def test_non_elementwise_losses_cannot_be_sharded(name):
    with pytest.raises(UserError, match="cannot be class-sharded"):
        ShardedHead(name, CLASSES, DIM)


def test_resumed_step_follows_the_samples_seen():
    state = {"step": 6, "global_batch": 32}
    # 100 samples: 3 steps/epoch at batch 32 -> 2 epochs done; at batch 16, 6 steps/epoch
    assert rescale_resumed_step(state, 100, 16, 6) == 12
    assert rescale_resumed_step({"step": 4, "global_batch": 32}, 100, 16, 6) == 8
    assert rescale_resumed_step({"step": 5}, 100, 16, 6) == 5


# --------------------------------------------------------------------- training
def _train_worker(rank: int, world: int, port: int, recipe_path: str, out: str) -> None:
    from eqmcli.run.recipe import load_recipe
    from eqmcli.train import train

    join_gloo(rank, world, port)
    summary = train(load_recipe(Path(recipe_path), ["train.distributed=sharded"]),
                    Path(out) / "sharded", progress=False)
    assert summary.steps > 0
    train(load_recipe(Path(recipe_path), ["train.distributed=ddp", "eval.every_epochs=0"]),
          Path(out) / "ddp", progress=False)
    dist.destroy_process_group()


def test_two_process_training_resumes_in_one_process(tmp_path, tiny_recipe):
    from eqmcli.run.checkpoint import load_checkpoint
    from eqmcli.run.recipe import load_recipe
    from eqmcli.run.rundir import load_trained
    from eqmcli.train import train

    tiny_recipe["train"]["epochs"] = 1
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    spawn(_train_worker, 2, str(path), str(tmp_path))

    run = tmp_path / "sharded"
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and state["head"]["weight"].shape == (8, 16)
    head_index = max(state["optimizer"]["state"])  # the head's weight is the last parameter
    momentum = state["optimizer"]["state"][head_index]["momentum_buffer"]
    assert momentum.shape == (8, 16), "the full head momentum is saved"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds.count("epoch") == 1 and "eval" in kinds, "rank 0 logs and evaluates once"
    assert (run / "checkpoints" / "best.pt").is_file()
    assert load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["step"] == state["step"]

    trained = load_trained(run)
    assert trained.head.weight.shape == (8, 16)
    summary = train(load_recipe(path, ["train.epochs=2"]), run, resume=True, progress=False)
    assert summary.resumed_from_step == summary.steps // 2 > state["step"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["world_size"] == 1
