"""Sweep member folders keep a swept key's section where its last part alone would read as
a top-level recipe key: `loss.name=am`, never `name=am` (the recipe's own `name`)."""

from __future__ import annotations

from eqmcli.experiments.grid import expand, folder_keys, parse_grid


def test_a_swept_loss_name_keeps_its_section(tiny_recipe_path):
    members = expand(tiny_recipe_path, [parse_grid("loss.name=eqm,am"),
                                        parse_grid("loss.scale=16")], 1, [])
    assert [m.name.rsplit(",seed=", 1)[0] for m in members] == [
        "loss.name=eqm,scale=16", "loss.name=am,scale=16"]


def test_top_level_keys_and_unique_leaves():
    assert folder_keys(["seed", "optim.name", "loss.t1", "data.train.seed"]) == {
        "seed": "seed", "optim.name": "optim.name", "loss.t1": "t1",
        "data.train.seed": "train.seed"}
