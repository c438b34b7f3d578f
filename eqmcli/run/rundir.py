"""The run directory: its layout, and loading a trained model back from it.

```
runs/<name>/recipe.yaml  metrics.jsonl  checkpoints/{last,best}.pt  eval/  analysis/  figures/
             .eqm-run (the marker: "an eqm command made this folder")  .eqm-lock (the OS lock)
```

A folder is recognisably a run directory when it holds the marker and `recipe.yaml`, or
(runs made before the marker existed) `recipe.yaml` and `checkpoints/`. `eqm train` and
`eqm import` write the marker through `RunPaths.mark`.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqmcli.atomic import atomic_write_text
from eqmcli.backbones import build_backbone
from eqmcli.errors import UserError, shown
from eqmcli.losses import build_head
from eqmcli.run.checkpoint import load_checkpoint, load_weights, require_fields
from eqmcli.run.recipe import Recipe, parse_recipe_text

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
MARKER = ".eqm-run"
LOCK = ".eqm-lock"
RUNS_FOLDER = "runs"
NAME_MAX = 255  # bytes per path component on the usual Linux file systems
SUMMARY = "summary.json"  # an analysis folder's summary (RUN/analysis/, its test/, ...)


@dataclass
class RunPaths:
    """Where each file of a run lives."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def bad_images(self) -> Path:
        return self.root / "bad_images.txt"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    def mark(self, command: str) -> None:
        """Write the marker saying which eqm command made this folder (kept if present)."""
        if not self.marker.is_file():
            atomic_write_text(self.marker, f"made by '{command}'; see eqmcli/run/rundir.py\n")

    def is_run_directory(self) -> bool:
        """True for a folder an eqm command made (marker + recipe, or an older run's recipe +
        checkpoints/)."""
        if not self.recipe.is_file():
            return False
        return self.marker.is_file() or self.checkpoints.is_dir()

    def metric_records(
        self, kinds: Collection[str] | None = None, *, tail_bytes: int | None = None
    ) -> list[dict[str, Any]]:
        """The records of `metrics.jsonl` in file order ([] when it is absent), those of
        `kinds` only when given; with `tail_bytes`, only the lines within the file's last
        `tail_bytes` bytes. Lines that are not a JSON object (cut off by a crash, or the
        first line of a tail) are skipped (`metrics_record`)."""
        if not self.metrics.is_file():
            return []
        with self.metrics.open("rb") as stream:
            if tail_bytes is not None:
                stream.seek(max(0, stream.seek(0, 2) - tail_bytes))
            lines = stream.read().splitlines()
        records = (metrics_record(line) for line in lines)
        return [r for r in records if r is not None and (kinds is None or r.get("kind") in kinds)]


def metrics_record(line: bytes | str) -> dict[str, Any] | None:
    """One line of `metrics.jsonl` as its record; None for a line that is not a JSON object
    (blank, or cut off by a crash or a full disk)."""
    try:
        record = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        return None
    return record if isinstance(record, dict) else None


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in the result file `path` (eval/, analysis/), None when the file is
    absent; an unreadable file or one that holds no JSON object is a `UserError`."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def read_analysis_summary(folder: Path) -> dict[str, Any] | None:
    """The `summary.json` that `eqm analyze` wrote in `folder` (`RunPaths.analysis_dir`, a
    checkpoint's or the test split's folder under it); None when there is none."""
    return read_json_object(folder / SUMMARY)


def default_run_dir(name: str) -> Path:
    """`runs/<name>`, for a recipe `name` that is a plain folder name (never a path)."""
    text = str(name)
    plain = (
        text not in ("", ".", "..")
        and not any(separator in text for separator in ("/", "\\", "\0"))
        and not Path(text).is_absolute()
    )
    size = len(text.encode("utf-8", "surrogateescape"))
    if plain and size > NAME_MAX:
        raise UserError(
            f"recipe name {shown(text)} is {size} bytes long, too long for a folder name (at "
            f"most {NAME_MAX}): it names the run directory runs/<name>; shorten it or pass "
            "--out DIR"
        )
    if not plain:
        raise UserError(
            f"recipe name {shown(text)} is not a plain folder name (no '/', '\\', '..' or "
            "absolute path): it names the run directory runs/<name>; pass --out DIR to "
            "choose another place"
        )
    return Path(RUNS_FOLDER) / text


@dataclass
class Trained:
    """A trained backbone and head, with the recipe that made them."""

    backbone: nn.Module
    head: nn.Module | None  # None: an imported backbone that came without class centres
    recipe: Recipe
    run_dir: Path
    checkpoint_path: Path
    input_size: tuple[int, int]
    epoch: int
    step: int


def checkpoint_folder(results_dir: Path, checkpoint: str) -> Path:
    """Where the results of a run's checkpoint named `checkpoint` go inside one of the run's
    results folders (`eval_dir`, `analysis_dir`): the folder itself for last.pt,
    `<folder>/<checkpoint stem>/` for any other (`eval/best/`, `analysis/best/`), so no
    checkpoint's results replace another's."""
    return results_dir if checkpoint == LAST else results_dir / Path(checkpoint).stem


def run_dir_of_checkpoint(checkpoint: Path) -> Path:
    """`runs/x/checkpoints/last.pt` -> `runs/x`; any other file -> its folder."""
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINT_DIR else parent


def find_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A run directory means its `checkpoints/last.pt` (the final model, not the best one)."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"run directory or checkpoint not found: {path}")
    candidate = RunPaths(path).last
    if not candidate.is_file():
        raise UserError(
            f"{path} holds no checkpoint (looked for {candidate}); train first with 'eqm train'"
        )
    return candidate


def recipe_from_state(state: dict, source: str) -> Recipe:
    """The resolved recipe stored inside a checkpoint."""
    text = state.get("recipe")
    if not isinstance(text, str):
        raise UserError(f"{source} carries no recipe; it was not written by 'eqm train'")
    return parse_recipe_text(text, source=f"{source} (stored recipe)")


def stored_input_size(state: dict, source: str | Path) -> tuple[int, int]:
    """The checkpoint's `input_size` as (height, width) pixels, or one sentence if malformed."""
    value = state.get("input_size")
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: 'input_size' {shown(value)} is not [height, width]") from None
    if min(height, width) < 1:
        raise UserError(f"{source}: 'input_size' {shown(value)} is not a positive size")
    return height, width


def load_trained(run_or_checkpoint: str | Path, device: str | torch.device = "cpu") -> Trained:
    """Rebuild the backbone and head of a run (or checkpoint file) in eval mode on `device`."""
    checkpoint_path = find_checkpoint(run_or_checkpoint)
    state = load_checkpoint(checkpoint_path)
    recipe = recipe_from_state(state, str(checkpoint_path))
    require_fields(state, ("input_size",), checkpoint_path)
    input_size = stored_input_size(state, checkpoint_path)
    model = recipe.model
    backbone = build_backbone(
        model.backbone, embedding_dim=model.embedding_dim, input_size=input_size
    )
    load_weights(backbone, state["backbone"], checkpoint_path, "backbone",
                 f"model.backbone {model.backbone}, embedding_dim {model.embedding_dim}")
    backbone.to(device).eval()
    head = None
    if "weight" in (state.get("head") or {}):  # `eqm import` without --head stores none
        num_classes, embedding_dim = state["head"]["weight"].shape
        if embedding_dim != model.embedding_dim:
            raise UserError(
                f"{checkpoint_path}: the stored recipe disagrees with its head weights: "
                f"model.embedding_dim is {model.embedding_dim}, the head's is {embedding_dim}"
            )
        head = build_head(
            recipe.loss.name,
            num_classes=int(num_classes),
            embedding_dim=int(embedding_dim),
            **recipe.loss.hyperparameters(),
        )
        load_weights(head, state["head"], checkpoint_path, "head", f"loss.name {recipe.loss.name}")
        head.to(device).eval()
    return Trained(
        backbone=backbone,
        head=head,
        recipe=recipe,
        run_dir=run_dir_of_checkpoint(checkpoint_path),
        checkpoint_path=checkpoint_path,
        input_size=input_size,
        epoch=int(state.get("epoch", 0)),
        step=int(state.get("step", 0)),
    )
