"""Hostile and broken recipes: one short sentence each, before anything large is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from eqmcli.errors import UserError
from eqmcli.run.recipe import (
    MAX_MESSAGE_CHARS,
    MAX_RECIPE_BYTES,
    MAX_SEED,
    Recipe,
    load_recipe,
    parse_recipe_text,
)
from eqmcli.run.rundir import recipe_from_state


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "recipe.yaml"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return path


def refusal(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(UserError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert "\n" not in message and len(message) <= MAX_MESSAGE_CHARS + 100
    return message


def alias_bomb() -> str:
    """~800 bytes: 8 levels of 9 aliases each = 9**8 (43 million) strings once expanded,
    aimed at a validated string field (`train.device`)."""
    words = '["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
    anchors = [f"&a {words}"]
    for previous, name in zip("abcdefg", "bcdefgh", strict=True):
        anchors.append(f"&{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "eval:\n  sets: [" + ", ".join(anchors) + "]\ntrain:\n  device: *h\n"


def test_alias_bomb_is_refused_before_validation(tmp_path, monkeypatch):
    text = alias_bomb()
    assert len(text) < 1000

    def never(*args, **kwargs):
        raise AssertionError("the expanded recipe reached validation")

    monkeypatch.setattr(Recipe, "model_validate", never)
    message = refusal(write(tmp_path, text))
    assert "alias" in message and "10,000" in message


def test_alias_inside_its_own_anchor_is_refused(tmp_path):
    assert "refers to the value that contains it" in refusal(
        write(tmp_path, "eval:\n  sets: &loop [*loop]\n")
    )


def test_oversized_and_deeply_nested_recipes_are_refused(tmp_path):
    big = write(tmp_path, "# " + "x" * MAX_RECIPE_BYTES + "\n")
    assert "larger than" in refusal(big)
    deep = write(tmp_path, "eval:\n  sets: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert "nested too deeply" in refusal(deep)


def test_non_utf8_bytes_name_the_offset(tmp_path):
    message = refusal(write(tmp_path, b"train:\n  device: caf\xe9\n"))
    assert "not UTF-8" in message and "offset 20" in message
    control = refusal(write(tmp_path, "train:\n  device: a\x00b\n"))
    assert "not valid YAML text" in control


def test_duplicate_sections_and_keys_are_refused_with_their_line(tmp_path):
    top = refusal(write(tmp_path, "loss:\n  name: am\ntrain:\n  epochs: 1\nloss:\n  name: eqm\n"))
    assert "'loss' appears twice" in top and "line 5" in top
    nested = refusal(write(tmp_path, "train:\n  epochs: 1\n  epochs: 2\n"))
    assert "'epochs' appears twice" in nested and "line 3" in nested


def test_merge_keys_may_still_be_overridden(tmp_path):
    recipe = load_recipe(write(tmp_path, "train:\n  <<: {epochs: 2, batch_size: 8}\n  epochs: 3\n"))
    assert recipe.train.epochs == 3 and recipe.train.batch_size == 8


@pytest.mark.parametrize(
    "text",
    ["optim:\n  lr: 1e400\n", "optim:\n  lr: .inf\n", "loss:\n  scale: .nan\n",
     "optim:\n  milestones: [1.0, -.inf]\n"],
)
def test_non_finite_numbers_are_refused(tmp_path, text):
    assert "finite" in refusal(write(tmp_path, text))


def test_non_finite_override_is_refused(tmp_path):
    assert "optim.lr" in refusal(write(tmp_path, "{}\n"), ["optim.lr=1e400"])


def test_seeds_are_bounded_to_what_numpy_and_torch_accept(tmp_path):
    assert load_recipe(write(tmp_path, f"seed: {MAX_SEED}\n")).seed == MAX_SEED
    for text in (f"seed: {MAX_SEED + 1}\n", "seed: -1\n", f"seed: {10**400}\n",
                 "data:\n  train:\n    kind: synthetic\n    seed: 99999999999999999999\n"):
        message = refusal(write(tmp_path, text))
        assert "seed" in message


def test_huge_lists_and_values_are_refused_with_short_messages(tmp_path):
    milestones = "optim:\n  milestones: [" + ", ".join(["1.0"] * 5000) + "]\n"
    assert "optim.milestones" in refusal(write(tmp_path, milestones))
    long_backbone = refusal(write(tmp_path, "model:\n  backbone: " + "x" * 100_000 + "\n"))
    assert "model.backbone" in long_backbone
    long_key = refusal(write(tmp_path, "train:\n  " + "k" * 1000 + ": 1\n"))
    assert "unknown key" in long_key
    synthetic = "data:\n  train:\n    kind: synthetic\n    num_classes: 1000000000000\n"
    assert "data.train.num_classes" in refusal(write(tmp_path, synthetic))


def test_stored_recipe_with_a_yaml_tag_is_a_user_error():
    stored = "name: !!python/object/apply:os.system ['echo owned']\n"
    with pytest.raises(UserError) as info:
        parse_recipe_text(stored, "last.pt (stored recipe)")
    assert "last.pt (stored recipe)" in str(info.value) and "YAML error" in str(info.value)
    assert parse_recipe_text(Recipe().to_yaml(), "last.pt") == Recipe()


def test_checkpoint_recipe_goes_through_the_bounded_reader():
    with pytest.raises(UserError, match="appears twice"):
        recipe_from_state({"recipe": "seed: 1\nseed: 2\n"}, "ckpt.pt")
