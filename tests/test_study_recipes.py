"""The imbalance-study recipes: they validate (`eqm train --dry-run`, no data needed), the
AM / EqM pairs differ only in their loss, and the data has the long tail the study needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eqmcli.data.synthetic import class_sizes
from eqmcli.run.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
STUDY = [
    "imbalance-am",
    "imbalance-eqm",
    "sphere-softmax",
    "sphere-am",
    "sphere-eqm",
    "casia-webface-r50-am",
    "casia-webface-r50-eqm",
]


def _raw(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def _without_loss(name: str) -> dict:
    data = _raw(name)
    data.pop("loss")
    data.pop("name")
    return data


@pytest.mark.parametrize("name", STUDY)
def test_dry_run_validates_without_the_data(name, tmp_path, monkeypatch, eqm):
    monkeypatch.chdir(tmp_path)  # relative data roots (data/faces_webface_112x112) do not exist
    result = eqm("train", str(RECIPES / f"{name}.yaml"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    assert load_recipe(RECIPES / f"{name}.yaml").name == name


@pytest.mark.parametrize(
    "pair",
    [
        ("imbalance-am", "imbalance-eqm"),
        ("sphere-am", "sphere-eqm"),
        ("sphere-softmax", "sphere-eqm"),
        ("casia-webface-r50-am", "casia-webface-r50-eqm"),
    ],
)
def test_compared_recipes_differ_only_in_the_loss(pair):
    assert _without_loss(pair[0]) == _without_loss(pair[1])


def test_imbalance_losses_and_long_tail():
    am, eqm = (
        load_recipe(RECIPES / "imbalance-am.yaml"),
        load_recipe(RECIPES / "imbalance-eqm.yaml"),
    )
    assert (am.loss.name, am.loss.scale, am.loss.margin) == ("am", 30.0, 0.35)
    assert eqm.loss.name == "eqm" and eqm.loss.t1 > eqm.loss.t2
    assert eqm.loss.scale == am.loss.scale
    src = am.data.train
    assert src.kind == "synthetic" and src.profile == "casia-like"
    sizes = class_sizes(src.num_classes, src.profile, src.min_images, src.max_images, src.seed)
    assert (sizes < 80).sum() >= 200  # many classes below the paper's 80-image line
    assert (sizes >= 80).sum() >= 20 and sizes.max() >= 300  # and a tail of large ones
    assert src.test_images_per_class > 0  # closed-set test split for eqm analyze --split test
    assert am.model.backbone == "tiny"


@pytest.mark.parametrize("name", ["sphere-softmax", "sphere-am", "sphere-eqm"])
def test_sphere_recipes_are_low_dimensional_and_imbalanced(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    src = recipe.data.train
    assert recipe.model.embedding_dim in (2, 3)
    assert 8 <= src.num_classes <= 10 and src.profile == "casia-like"
    sizes = class_sizes(src.num_classes, src.profile, src.min_images, src.max_images, src.seed)
    assert sizes.max() >= 10 * sizes.min()


def test_casia_recipes_follow_the_sphereface_schedule():
    for name in ("casia-webface-r50-am", "casia-webface-r50-eqm"):
        r = load_recipe(RECIPES / f"{name}.yaml")
        assert r.data.train.kind == "record"
        assert r.data.train.root == Path("data/faces_webface_112x112")
        assert (r.model.backbone, r.model.embedding_dim) == ("iresnet50", 512)
        assert r.model.input_size == (112, 112)
        assert (r.optim.name, r.optim.lr, r.optim.momentum) == ("sgd", 0.1, 0.9)
        assert r.optim.weight_decay == 5e-4 and r.optim.schedule == "multistep"
        assert r.train.batch_size == 512
        # 16K / 24K / 28K iterations of 512 images over ~490K images
        epochs = [*r.optim.milestones, r.train.epochs]
        for epoch, iterations in zip(epochs, [16e3, 24e3, 28e3], strict=True):
            assert abs(epoch - iterations * 512 / 490e3) < 0.5
        assert r.eval.sets == ["lfw", "cfp_fp", "agedb_30"]
        assert r.eval.data_root == Path("data/faces_webface_112x112")
