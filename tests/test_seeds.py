"""Seeds derived from the recipe seed never overflow torch's 64-bit generator seed."""

from __future__ import annotations

from pathlib import Path

import torch

from eqmcli.distributed import ShardedHead
from eqmcli.run.recipe import MAX_SEED, load_recipe
from eqmcli.seeds import generator_seed, seeded_generator
from eqmcli.train import train


def test_partial_fc_draws_at_the_largest_recipe_seed() -> None:
    head = ShardedHead("eqm", 100, 8, sample_rate=0.1, seed=MAX_SEED)
    labels = torch.tensor([0, 5, 50, 99, 99])
    head(torch.randn(5, 8), labels)
    first = head.last_sampled
    head(torch.randn(5, 8), labels)
    assert first is not None and len(first) == 10 and set(first.tolist()) >= {0, 5, 50, 99}
    assert not torch.equal(first, head.last_sampled), "each step draws anew"


def test_derived_seeds_below_2_to_the_64_are_used_unchanged() -> None:
    for value in (0, 3 * 1_000_003 + 7, 2**63, 2**64 - 1):
        assert generator_seed(value) == value
        expected = torch.rand(4, generator=torch.Generator().manual_seed(value))
        assert torch.equal(torch.rand(4, generator=seeded_generator(value)), expected)
    assert generator_seed(2**64 + 5) == 5


def test_training_at_the_largest_recipe_seed(tiny_recipe_path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(
        tiny_recipe_path, [f"seed={MAX_SEED}", "train.epochs=1", "eval.every_epochs=0"]
    )
    summary = train(recipe, tmp_path / "run", progress=False)
    assert summary.steps > 0
