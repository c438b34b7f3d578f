"""The grid of `eqm sweep`: Hydra-style `key=v1,v2,...` axes expanded into runs x seeds.

Syntax (one `--grid` per swept key, as in Hydra's multirun): `loss.t1=0.4,0.5,0.6`.
Values are split at commas; a value in single or double quotes keeps its commas and is
always a string (`data.train.profile='casia-like'`); an unquoted value is typed exactly
like a `--set` value (a YAML scalar: int, float, bool, null or string; `1e-3` is a float).
Each member of the Cartesian product of the axes is run once per seed; its folder is
named after its overrides, e.g. `t1=0.5,scale=30,seed=0` (the shortest dotted suffix of
each key that tells the keys apart).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eqmcli.errors import UserError, shown
from eqmcli.run.recipe import Recipe, load_recipe, parse_override
from eqmcli.run.rundir import NAME_MAX

SEED_KEY = "seed"
MAX_MEMBERS = 10_000
LOG_SUFFIX = ".log"  # a member's log is OUT/logs/<name>.log, the longest name it gets
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")


@dataclass(frozen=True)
class GridAxis:
    """One swept recipe key: its values as given to `--set` and as typed values."""

    key: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Member:
    """One run of a sweep: a grid point (`config`) with one seed."""

    config: str
    seed: int
    assignments: tuple[tuple[str, Any], ...]
    overrides: tuple[str, ...]
    recipe: Recipe

    @property
    def name(self) -> str:
        """The run directory's folder name, e.g. `t1=0.5,scale=30,seed=0`."""
        return f"{self.config},{SEED_KEY}={self.seed}" if self.config else f"{SEED_KEY}={self.seed}"


def split_values(text: str) -> list[tuple[str, bool]]:
    """`a, 'b,c',"d"` -> [("a", False), ("b,c", True), ("d", True)] (value, was quoted).

    Whitespace around unquoted values is dropped; text after a closing quote (other than
    spaces before the next comma) is a `UserError`.
    """
    values: list[tuple[str, bool]] = []
    current, quote, quoted, closed = "", "", False, False
    for char in text:
        if quote:
            if char == quote:
                quote, closed = "", True
            else:
                current += char
        elif char == ",":
            values.append((current if quoted else current.strip(), quoted))
            current, quoted, closed = "", False, False
        elif closed:
            if not char.isspace():
                raise UserError(f"--grid value {shown(text)} has text after a closing quote")
        elif char in "'\"" and not current.strip():
            quote, quoted, current = char, True, ""
        else:
            current += char
    if quote:
        raise UserError(f"--grid value {shown(text)} has an unclosed {quote} quote")
    values.append((current if quoted else current.strip(), quoted))
    return values


def parse_grid(text: str) -> GridAxis:
    """`loss.t1=0.4,0.5` -> GridAxis; a missing `=`, an empty or repeated value is a `UserError`."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise UserError(f"--grid {shown(text)} is not of the form key.path=v1,v2,...")
    if key == SEED_KEY:
        raise UserError("--grid seed=... is what --seeds N does; use --seeds")
    texts, values = [], []
    for value, quoted in split_values(raw):
        if not value and not quoted:
            raise UserError(f"--grid {shown(text)} has an empty value")
        set_text = json.dumps(value) if quoted else value
        texts.append(set_text)
        values.append(value if quoted else parse_override(f"{key}={value}")[1])
    if len({json.dumps(v, sort_keys=True, default=str) for v in values}) < len(values):
        raise UserError(f"--grid {shown(text)} repeats a value")
    return GridAxis(key=key, texts=tuple(texts), values=tuple(values))


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key -> its shortest dotted suffix that no other key ends with."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            suffix = ".".join(parts[-size:])
            others = [k for k in keys if k != key and (k == suffix or k.endswith("." + suffix))]
            if not others:
                break
        short[key] = suffix
    return short


def folder_keys(keys: list[str]) -> dict[str, str]:
    """The names of swept keys in folder names: `short_keys`, kept apart from the recipe's
    top-level keys too (`seed`, `name`: `loss.name` is not shortened to `name`)."""
    short = short_keys([*keys, *Recipe.model_fields])
    return {key: short[key] for key in keys}


def _config_name(axes: list[GridAxis], point: tuple[int, ...], short: dict[str, str]) -> str:
    """`t1=0.5,scale=30` for the values `point` (indices) of `axes`, safe as a folder name."""
    parts = []
    for axis, index in zip(axes, point, strict=True):
        value = axis.texts[index]
        value = value[1:-1] if value.startswith('"') and value.endswith('"') else value
        parts.append(f"{short[axis.key]}={_UNSAFE.sub('_', value)}")
    return ",".join(parts)


def expand(
    recipe_path: Path, axes: list[GridAxis], seeds: int, sets: list[str]
) -> list[Member]:
    """Every grid point x `seeds` seeds, each checked by loading its recipe.

    Seeds count up from the recipe's own `seed` (after `sets`). More than `MAX_MEMBERS`
    members (counted before the product is built), a key that the recipe does not have, a
    bad value, a key both swept and `--set`, folder names that collide or are too long for
    the file system are a `UserError` raised before anything runs.
    """
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    keys = [axis.key for axis in axes]
    set_keys = {text.partition("=")[0].strip() for text in sets}
    repeated = sorted({k for k in keys if keys.count(k) > 1} | (set(keys) & set_keys))
    if repeated:
        raise UserError(f"recipe key {shown(repeated[0])} is given twice (--grid/--set)")
    if SEED_KEY in set_keys:
        raise UserError("--set seed=... would give every seed the same value; use --seeds")
    count = math.prod(len(axis.values) for axis in axes) * seeds  # before any product
    if count > MAX_MEMBERS:
        raise UserError(f"the sweep has {count} runs; at most {MAX_MEMBERS}")
    base_seed = load_recipe(recipe_path, sets).seed
    short = folder_keys(keys)
    members = []
    for point in itertools.product(*(range(len(axis.values)) for axis in axes)):
        grid_sets = [f"{axis.key}={axis.texts[i]}" for axis, i in zip(axes, point, strict=True)]
        config = _config_name(axes, point, short)
        for seed in range(base_seed, base_seed + seeds):
            overrides = (*sets, *grid_sets, f"{SEED_KEY}={seed}")
            recipe = load_recipe(recipe_path, list(overrides))
            assignments = tuple(
                (axis.key, axis.values[i]) for axis, i in zip(axes, point, strict=True)
            )
            members.append(Member(config, seed, assignments, overrides, recipe))
    names = [m.name for m in members]
    too_long = next((n for n in names if len((n + LOG_SUFFIX).encode()) > NAME_MAX), None)
    if too_long is not None:
        raise UserError(
            f"the run folder name {shown(too_long)} would be longer than the file system "
            f"allows ({NAME_MAX} bytes with its '{LOG_SUFFIX}' log); shorten the --grid values"
        )
    if len(set(names)) < len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two runs of the sweep would share the folder name {shown(clash)}")
    return members
