"""EqM's t2 against what C class centres in d dimensions allow: the spherical-code bounds
of `eqmcli.losses.feasibility`, the warning `eqm train` prints before training, and the
Fig. 1 toy recipe that now asks for a t2 the sphere can give."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from eqmcli.losses.feasibility import (
    TAMMES_DEGREES,
    infeasible_t2_message,
    smallest_largest_cosine,
)
from eqmcli.run.recipe import load_recipe
from eqmcli.train.setup import infeasible_t2_warning

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize(
    ("count", "dim", "cosine", "source"),
    [
        (2, 3, -1.0, "regular simplex"),  # two antipodal centres
        (4, 3, -1 / 3, "regular simplex"),  # the tetrahedron
        (3, 2, -0.5, "regular simplex"),  # 120° apart on a circle
        (129, 128, -1 / 128, "regular simplex"),
        (5, 3, 0.0, "Rankin (C ≤ 2d)"),
        (6, 3, 0.0, "Rankin (C ≤ 2d)"),  # the octahedron
        (200, 128, 0.0, "Rankin (C ≤ 2d)"),  # the quickstart recipe
        (8, 2, math.cos(math.pi / 4), "regular polygon"),
        (5, 2, math.cos(2 * math.pi / 5), "regular polygon"),
        (8, 3, (2 * math.sqrt(2) - 1) / 7, "Tammes problem, N = 8"),  # square antiprism
        (9, 3, 1 / 3, "Tammes problem, N = 9"),
        (12, 3, 1 / math.sqrt(5), "Tammes problem, N = 12"),  # the icosahedron
        (3, 1, 1.0, "pigeonhole (d = 1)"),
    ],
)
def test_known_bounds(count, dim, cosine, source):
    bound = smallest_largest_cosine(count, dim)
    assert bound is not None
    assert bound.cosine == pytest.approx(cosine, abs=1e-5)
    assert bound.source == source


def test_tammes_n_8_is_about_0_2612():
    bound = smallest_largest_cosine(8, 3)
    assert bound.cosine == pytest.approx(0.2612, abs=1e-4)
    assert bound.degrees == pytest.approx(74.8585, abs=1e-4)


@pytest.mark.parametrize(("count", "dim"), [(15, 3), (23, 3), (25, 3), (400, 128), (9, 4)])
def test_unknown_bounds_are_none(count, dim):
    assert smallest_largest_cosine(count, dim) is None


def test_bounds_on_the_sphere_never_fall_as_centres_are_added():
    """More centres can only crowd the sphere: the bound is non-decreasing in C (d = 3)."""
    known = [(n, smallest_largest_cosine(n, 3)) for n in range(2, 25)]
    cosines = [b.cosine for _, b in known if b is not None]
    assert cosines == sorted(cosines)
    assert [n for n, b in known if b is not None] == [*range(2, 15), 24]
    assert set(TAMMES_DEGREES) == {7, 8, 9, 10, 11, 12, 13, 14, 24}


def test_the_cases_agree_where_they_meet():
    """The polygon formula gives the simplex (C = 3) and Rankin (C = 4) values on a circle."""
    for count in (3, 4):
        assert math.cos(2 * math.pi / count) == pytest.approx(
            smallest_largest_cosine(count, 2).cosine, abs=1e-12
        )


def test_message_names_the_bound_for_the_old_toy_setting():
    message = infeasible_t2_message(0.1, 8, 3)
    assert message is not None and message.startswith("warning: loss.t2 = 0.1 ")
    assert "8 class centres in 3 dimensions" in message
    assert "cosine ≥ 0.2612 (74.9°; Tammes problem, N = 8)" in message
    assert "choose t2 ≥ 0.2613" in message  # rounded up: it does meet the bound
    assert "\n" not in message


@pytest.mark.parametrize(
    ("t2", "count", "dim"),
    [(0.3, 8, 3), (0.2613, 8, 3), (0.1, 200, 128), (0.0, 6, 3), (0.1, 400, 128), (0.9, 24, 3)],
)
def test_no_message_for_feasible_or_unknown_settings(t2, count, dim):
    assert infeasible_t2_message(t2, count, dim) is None


def test_only_eqm_is_warned_and_only_where_the_class_count_is_known():
    toy = load_recipe(RECIPES / "sphere-eqm.yaml", ["loss.t1=0.4", "loss.t2=0.1"])
    assert infeasible_t2_warning(toy) is not None  # synthetic: the recipe states C = 8
    assert infeasible_t2_warning(toy, 5) is None  # 5 centres in 3-D: the bound is 0
    assert infeasible_t2_warning(load_recipe(RECIPES / "sphere-am.yaml")) is None
    casia = load_recipe(RECIPES / "casia-webface-r50-eqm.yaml")
    assert infeasible_t2_warning(casia) is None  # record data: only the data knows C


@pytest.mark.parametrize("name", ["sphere-eqm", "quickstart", "imbalance-eqm"])
def test_shipped_eqm_recipes_are_feasible(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.loss.name == "eqm"
    assert infeasible_t2_warning(recipe) is None


def test_sphere_eqm_t2_clears_the_tammes_bound():
    recipe = load_recipe(RECIPES / "sphere-eqm.yaml")
    bound = smallest_largest_cosine(recipe.data.train.num_classes, recipe.model.embedding_dim)
    assert bound.source == "Tammes problem, N = 8"
    assert recipe.loss.t2 >= bound.cosine + 0.03  # with room, not at the edge
    assert recipe.loss.t1 > recipe.loss.t2


def test_dry_run_warns_for_the_old_toy_setting(tmp_path, monkeypatch, eqm):
    monkeypatch.chdir(tmp_path)
    result = eqm("train", str(RECIPES / "sphere-eqm.yaml"), "--dry-run",
                 "--set", "loss.t1=0.4", "--set", "loss.t2=0.1")
    assert result.exit_code == 0, result.output
    assert "warning: loss.t2 = 0.1 is below what 8 class centres" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("t2", "warned"), [(0.1, True), (0.3, False)])
def test_eqm_train_warns_once_before_training(t2, warned, tmp_path, tiny_recipe_path, eqm):
    """8 classes with 3-D embeddings for one tiny epoch: the warning comes once, before the
    first training line, for t2 = 0.1 only; training goes on either way."""
    result = eqm("train", str(tiny_recipe_path), "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", "model.embedding_dim=3", "--set", "loss.t1=0.5", "--set", f"loss.t2={t2}",
                 "--set", "train.epochs=1", "--set", "eval.every_epochs=0")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    warnings = [i for i, line in enumerate(lines) if line.startswith("warning: loss.t2")]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        first_step = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1"))
        assert warnings[0] < first_step
        assert "Tammes problem, N = 8" in lines[warnings[0]]
