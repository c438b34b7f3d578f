"""Recipe loading: defaults, overrides, and one clear error per kind of mistake."""

from pathlib import Path

import pytest
import yaml

from eqmcli.errors import UserError
from eqmcli.run.recipe import Recipe, apply_overrides, load_recipe, parse_override

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def recipe_error(tmp_path: Path, text: str) -> str:
    """The one sentence `load_recipe` raises (as a `UserError`) for a recipe holding `text`."""
    with pytest.raises(UserError) as info:
        load_recipe(write(tmp_path, text))
    return str(info.value)


def test_empty_recipe_gets_every_default(tmp_path):
    recipe = load_recipe(write(tmp_path, "{}\n"))
    assert recipe.data.train.kind == "synthetic"
    assert recipe.loss.name == "eqm"
    assert recipe.loss.t1 == 0.5 and recipe.loss.t2 == 0.1 and recipe.loss.scale == 64.0
    assert recipe.name == "recipe"  # the file's stem


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    again = load_recipe(write(tmp_path, recipe.to_yaml()))
    assert again == recipe


def test_overrides_parse_yaml_scalars_and_reach_nested_keys(tmp_path):
    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        ["train.epochs=3", "loss.t1=0.6", "data.train.image_size=32", "eval.sets=[synthetic]"],
    )
    assert recipe.train.epochs == 3
    assert recipe.loss.t1 == 0.6
    assert recipe.data.train.image_size == 32
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert apply_overrides({}, ["x.y=1e-3"]) == {"x": {"y": 1e-3}}


def test_typo_names_yaml_path_and_nearest_key(tmp_path):
    message = recipe_error(tmp_path, "train:\n  epoch: 3\n")
    assert "train.epoch" in message
    assert "did you mean 'epochs'" in message


def test_typo_inside_data_source_names_nearest_key(tmp_path):
    message = recipe_error(tmp_path, "data:\n  train:\n    kind: synthetic\n    num_clases: 5\n")
    assert "data.train.num_clases" in message
    assert "num_classes" in message


def test_wrong_type_names_key_and_value(tmp_path):
    message = recipe_error(tmp_path, "train:\n  batch_size: lots\n")
    assert "train.batch_size" in message
    assert "lots" in message


def test_broken_yaml_names_the_line(tmp_path):
    message = recipe_error(tmp_path, "train:\n  epochs: 3\n loss: [\n")
    assert "YAML syntax error" in message
    assert "line 3" in message


def test_bad_loss_hyperparameter_is_a_recipe_error(tmp_path):
    message = recipe_error(tmp_path, "loss:\n  name: eqm\n  t1: 0.1\n  t2: 0.5\n")
    assert "loss" in message and "t1" in message


def test_unknown_backbone_lists_the_choices(tmp_path):
    message = recipe_error(tmp_path, "model:\n  backbone: resnet9000\n")
    assert "model.backbone" in message and "iresnet50" in message


def test_missing_recipe_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_every_shipped_recipe_validates():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        assert isinstance(load_recipe(path), Recipe), path
    assert yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())["loss"]["name"]


@pytest.mark.parametrize(
    ("train", "folder"),
    [({"kind": "synthetic"}, None), ({"kind": "image-folder", "root": "faces"}, Path("faces")),
     ({"kind": "record", "root": "/data/webface"}, Path("/data/webface"))],
)
def test_data_folder_is_the_sources_root_or_none_and_keeps_the_key_order(train, folder):
    source = Recipe.model_validate({"data": {"train": train}}).data.train
    assert source.data_folder == folder
    assert next(iter(source.model_dump())) == "kind"
