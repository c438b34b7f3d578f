"""Recipes: YAML -> validated pydantic models, with `--set a.b=value` overrides.

Every section forbids unknown keys, so a typo is reported with its YAML path and the
nearest valid key instead of being silently ignored. `load_recipe` is the one entry point;
`Recipe.to_yaml()` writes the fully resolved recipe into the run directory.
"""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eqmcli.errors import UserError


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- data
class SyntheticSource(Section):
    """Procedurally rendered identities with long-tailed class sizes (no files needed)."""

    kind: Literal["synthetic"] = "synthetic"
    num_classes: int = Field(200, ge=2, description="training identities")
    profile: Literal["casia-like", "uniform"] = "casia-like"
    min_images: int = Field(10, ge=2, description="images of the smallest class")
    max_images: int = Field(400, ge=2, description="images of the largest class")
    image_size: int = Field(48, ge=16, le=224, description="rendered square size, pixels")
    seed: int = 0
    test_images_per_class: int = Field(5, ge=0, description="closed-set held-out images")
    verification_identities: int = Field(
        300, ge=2, description="held-out identities for open-set verification pairs"
    )
    verification_folds: int = Field(10, ge=2)
    verification_pairs_per_fold: int = Field(
        300, ge=1, description="matched pairs per fold (as many mismatched)"
    )
    difficulty: float = Field(
        1.0, ge=0.0, le=3.0, description="nuisance strength; 0 = clean renders, 1 = default"
    )

    @model_validator(mode="after")
    def _sizes(self) -> SyntheticSource:
        if self.max_images < self.min_images:
            raise ValueError("max_images must be >= min_images")
        return self


class ImageFolderSource(Section):
    """`root/<identity>/<image>` (the CASIA-WebFace aligned layout)."""

    kind: Literal["image-folder"] = "image-folder"
    root: Path
    image_size: int | None = Field(None, description="resize to this square size, pixels")
    holdout_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="per-class fraction held out as the test split"
    )
    seed: int = 0


class RecordSource(Section):
    """InsightFace `train.rec` + `train.idx` (+ `property`), read without mxnet."""

    kind: Literal["record"] = "record"
    root: Path = Field(description="folder holding train.rec and train.idx")
    image_size: int | None = Field(None, description="resize to this square size, pixels")
    holdout_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0


TrainSource = Annotated[
    SyntheticSource | ImageFolderSource | RecordSource, Field(discriminator="kind")
]


class DataSection(Section):
    train: TrainSource = Field(default_factory=SyntheticSource)
    num_workers: int | None = Field(
        None, ge=0, description="DataLoader workers; null picks from the CPU count"
    )
    strict: bool = Field(False, description="an undecodable image stops the run")


# -------------------------------------------------------------------------- model
class ModelSection(Section):
    backbone: str = "tiny"
    embedding_dim: int = Field(512, ge=2)
    input_size: tuple[int, int] | None = Field(
        None, description="(height, width) fed to the backbone; null = the data's size"
    )

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from eqmcli.backbones import BACKBONE_NAMES

        if value not in BACKBONE_NAMES:
            choices = ", ".join(BACKBONE_NAMES)
            raise ValueError(f"unknown backbone {value!r}; choose one of {choices}")
        return value


# --------------------------------------------------------------------------- loss
class LossSection(Section):
    """The margin head. Unset hyperparameters take the loss's documented defaults."""

    name: str = "eqm"
    scale: float | None = None
    margin: float | None = None
    t1: float | None = None
    t2: float | None = None
    gamma: float | None = None
    lambda_base: float | None = None
    lambda_gamma: float | None = None
    lambda_power: float | None = None
    lambda_min: float | None = None

    @model_validator(mode="after")
    def _resolve(self) -> LossSection:
        from eqmcli.losses import resolve_hyperparameters

        given = {k: v for k, v in self.hyperparameters().items() if v is not None}
        resolved = resolve_hyperparameters(self.name, **given)  # raises ValueError
        for key, value in resolved.items():
            object.__setattr__(self, key, value)
        return self

    def hyperparameters(self) -> dict[str, float]:
        """The keyword arguments for `build_head` (only those the loss uses)."""
        data = self.model_dump(exclude={"name"})
        return {k: v for k, v in data.items() if v is not None}


# -------------------------------------------------------------------------- optim
class OptimSection(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "multistep", "poly", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[float] = Field(default_factory=list, description="epochs (multistep)")
    decay_factor: float = Field(0.1, gt=0, le=1, description="multistep lr factor")
    power: float = Field(2.0, gt=0, description="polynomial decay power")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr / lr (cosine, poly)")
    grad_clip: float | None = Field(None, gt=0, description="max global grad L2 norm")


# -------------------------------------------------------------------------- train
class TrainSection(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=2)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on CPU"
    )
    channels_last: bool = Field(
        True, description="NHWC memory format (faster on CUDA and on the CPU: eqm bench train)"
    )
    compile: bool = False
    log_every: int = Field(20, ge=1, description="steps between metrics.jsonl step records")
    distributed: Literal["ddp", "sharded"] = "ddp"
    sample_rate: float = Field(1.0, gt=0, le=1, description="Partial FC centre sampling")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from eqmcli.devices import validate_device_string

        return validate_device_string(value)


# --------------------------------------------------------------------------- eval
class EvalSection(Section):
    every_epochs: int = Field(1, ge=0, description="0 = no verification during training")
    sets: list[str] = Field(
        default_factory=lambda: ["synthetic"],
        description="'synthetic' (held-out identities) or lfw, cfp_fp, agedb_30, calfw, cplfw",
    )
    data_root: Path | None = Field(None, description="folder with <name>.bin / lfw/")
    flip: bool = True
    batch_size: int = Field(256, ge=1)


class Recipe(Section):
    name: str = "run"
    seed: int = 0
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    loss: LossSection = Field(default_factory=LossSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    def to_yaml(self) -> str:
        """The fully resolved recipe as YAML (round-trips through `load_recipe`)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ------------------------------------------------------------------------ loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as a YAML scalar)."""
    if "=" not in text:
        raise UserError(f"--set {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise UserError(f"--set {text!r} names no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides to the raw recipe mapping (in place, returned)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return data


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at `loc` (for 'did you mean' hints)."""
    current: Any = model
    for part in loc:
        is_model = isinstance(current, type) and issubclass(current, BaseModel)
        if isinstance(part, int) or not is_model:
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            # discriminated-union tag, e.g. 'synthetic': pick the matching member
            for member in (SyntheticSource, ImageFolderSource, RecordSource):
                if member.model_fields["kind"].default == part:
                    current = member
            continue
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
                break
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _describe(error: dict[str, Any], source: str) -> str:
    loc = tuple(error["loc"])
    shown = [str(p) for p in loc if p not in ("synthetic", "image-folder", "record")]
    path = ".".join(shown) or "<top level>"
    if error["type"] == "extra_forbidden":
        valid = _valid_keys(Recipe, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; valid keys: {', '.join(valid)}"
        return f"{source}: unknown key '{path}'{suggestion}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{source}: '{path}' is required"
    given = error.get("input")
    shown_input = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
    return f"{source}: '{path}': {message}{shown_input}"


def recipe_from_mapping(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw mapping; a problem raises `UserError` naming the YAML path."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(_describe(exc.errors()[0], source)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file. Every problem is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{path}: YAML syntax error{where}: {problem}") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise UserError(f"{path}: a recipe must be a mapping of sections, got {kind}")
    data.setdefault("name", path.stem)
    apply_overrides(data, overrides or [])
    return recipe_from_mapping(data, source=str(path))
