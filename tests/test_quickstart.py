"""The README's main job: `eqm train recipes/quickstart.yaml` learns real verification.

These run the shipped quickstart recipe unchanged (about 2 minutes on a quiet 2-core CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eqmcli.backbones import build_backbone
from eqmcli.evaluation.pair_sets import synthetic_verification_set
from eqmcli.evaluation.verification import evaluate_set
from eqmcli.run.recipe import load_recipe
from eqmcli.train import TrainSummary, train

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> TrainSummary:
    out = tmp_path_factory.mktemp("quickstart") / "run"
    return train(load_recipe(QUICKSTART, ["train.device=cpu"]), out, progress=False)


def test_quickstart_reaches_90_percent_on_held_out_identities(quickstart_run):
    final = quickstart_run.evaluations[-1]
    assert final["benchmark"] == "synthetic"
    assert final["pairs"] == 6000
    assert final["accuracy"] >= 0.90, final["accuracy"]


def test_untrained_network_scores_far_lower_on_the_same_pairs(quickstart_run):
    """Both scored without flip fusion (training's result records that accuracy too), so
    the untrained network embeds the 12,000 images once instead of twice."""
    recipe = load_recipe(QUICKSTART)
    torch.manual_seed(recipe.seed)
    size = recipe.data.train.image_size
    untrained = build_backbone(
        recipe.model.backbone, embedding_dim=recipe.model.embedding_dim, input_size=(size, size)
    )
    result = evaluate_set(
        untrained, synthetic_verification_set(recipe.data.train), device=torch.device("cpu"),
        input_size=(size, size), flip=False, progress=False,
    )
    trained = quickstart_run.evaluations[-1]["accuracy_noflip"]
    assert result.accuracy <= trained - 0.15, (result.accuracy, trained)
