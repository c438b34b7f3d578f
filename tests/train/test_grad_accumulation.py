"""`train.grad_accumulation` (arcface_torch's `gradient_acc`): K micro-batches of B images per
optimizer step train like one batch of K·B, and every counter counts optimizer steps."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import eqmcli.train.setup
from eqmcli.errors import UserError
from eqmcli.run.checkpoint import load_checkpoint
from eqmcli.run.recipe import load_recipe
from eqmcli.train import train

FP32 = ["train.precision=fp32", "eval.every_epochs=0", "train.epochs=2", "train.log_every=1"]


def batch_norm_free_backbone(name: str, *, embedding_dim: int, input_size: tuple[int, int]):
    """A conv net without BatchNorm or dropout: with them a micro-batch of B normalizes by
    its own statistics, so K·B in K parts is not one batch of K·B (see the docs)."""
    height, width = input_size
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.PReLU(8), nn.Flatten(),
        nn.Linear(8 * ((height - 3) // 2 + 1) * ((width - 3) // 2 + 1), embedding_dim),
    )


def records(run, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_two_micro_batches_of_b_train_like_one_batch_of_2b(tiny_recipe_path, tmp_path,
                                                          monkeypatch):
    monkeypatch.setattr(eqmcli.train.setup, "build_backbone", batch_norm_free_backbone)
    runs = {}
    for name, overrides in {
        "one batch of 16": ["train.batch_size=16"],
        "2 x 8": ["train.batch_size=8", "train.grad_accumulation=2"],
        "one batch of 8": ["train.batch_size=8"],  # the yardstick: another training
    }.items():
        runs[name] = tmp_path / name.replace(" ", "-")
        train(load_recipe(tiny_recipe_path, [*FP32, *overrides]), runs[name], progress=False)
    big, split, other = (load_checkpoint(runs[k] / "checkpoints" / "last.pt")
                         for k in ("one batch of 16", "2 x 8", "one batch of 8"))
    assert split["step"] == big["step"] == other["step"] // 2 > 0
    assert split["global_batch"] == big["global_batch"] == 16
    for part in ("backbone", "head"):
        for key, value in big[part].items():
            difference = (split[part][key] - value).abs().max().item()
            assert difference <= 1e-5 * max(1.0, value.abs().max().item()), (part, key)
    # float rounding is all that separates them; a different training is far away
    far = (other["head"]["weight"] - big["head"]["weight"]).abs().max().item()
    assert far > 1e3 * (split["head"]["weight"] - big["head"]["weight"]).abs().max().item()
    assert [r["step"] for r in records(runs["2 x 8"], "step")] == [
        r["step"] for r in records(runs["one batch of 16"], "step")]
    assert [r["lr"] for r in records(runs["2 x 8"], "step")] == [
        r["lr"] for r in records(runs["one batch of 16"], "step")], "the schedule counts steps"
    for a, b in zip(records(runs["2 x 8"], "step"), records(runs["one batch of 16"], "step"),
                    strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), "the logged loss is the batch's"


def test_a_resume_with_accumulation_continues_exactly(straight_and_resumed):
    a, b = straight_and_resumed([*FP32, "train.batch_size=8", "train.grad_accumulation=2",
                                 "optim.schedule=constant", "optim.warmup_epochs=0"])
    assert a["step"] == b["step"]
    assert all(torch.equal(a["backbone"][k], b["backbone"][k]) for k in a["backbone"])
    assert torch.equal(a["head"]["weight"], b["head"]["weight"])


def test_accumulation_is_validated_and_the_batch_error_names_it(tiny_recipe_path, tmp_path):
    with pytest.raises(UserError, match="grad_accumulation"):
        load_recipe(tiny_recipe_path, ["train.grad_accumulation=0"])
    recipe = load_recipe(tiny_recipe_path, ["train.batch_size=16", "train.grad_accumulation=100",
                                            "eval.every_epochs=0"])
    with pytest.raises(UserError, match=r"train.batch_size 16 x train.grad_accumulation 100 x 1"):
        train(recipe, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_partial_fc_draws_resume_after_steps_times_micro_batches(straight_and_resumed):
    """Partial FC draws once per forward pass: a resumed run continues the draws at
    steps x K, so it ends bitwise where an uninterrupted run ends."""
    overrides = [*FP32, "train.batch_size=8", "train.grad_accumulation=2",
                 "train.distributed=sharded", "train.sample_rate=0.5",
                 "data.train.num_classes=40", "data.train.max_images=6",  # 20 of 40 centres drawn
                 "optim.schedule=constant", "optim.warmup_epochs=0"]
    a, b = straight_and_resumed(overrides)
    assert torch.equal(a["head"]["weight"], b["head"]["weight"])
    assert all(torch.equal(a["backbone"][k], b["backbone"][k]) for k in a["backbone"])
