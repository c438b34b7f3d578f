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
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from eqmcli.backbones import BACKBONE_NAMES
from eqmcli.devices import validate_device_string
from eqmcli.errors import UserError, shown
from eqmcli.losses import resolve_hyperparameters

MAX_RECIPE_BYTES = 1 << 20  # a recipe file is a few KiB; this bounds what is read
MAX_RECIPE_NODES = 10_000  # YAML values after alias expansion (a full recipe has ~100)
MAX_MESSAGE_CHARS = 300  # a validation message, whatever a validator put into it
MAX_SEED = 2**32 - 1  # numpy's limit (torch.manual_seed accepts more)
MAX_COUNT = 10_000_000  # classes, images per class, pairs: far above any real data set
MAX_PIXELS = 4096  # an image side
MAX_PATH_CHARS = 4096  # Linux PATH_MAX
IMAGE_SIZE_HELP = (
    "resize every image to this size in the data workers: a square side or [height, width] "
    "in pixels; null = model.input_size, else the first image's size"
)


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _bounded_path(value: Path) -> Path:
    if len(str(value)) > MAX_PATH_CHARS:
        raise ValueError(f"a path longer than {MAX_PATH_CHARS} characters")
    return value


Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="random seed, 0 .. 2**32 - 1")]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Pixels = Annotated[int, Field(ge=4, le=MAX_PIXELS)]
RecipePath = Annotated[Path, AfterValidator(_bounded_path)]
ImageSize = Pixels | tuple[Pixels, Pixels]  # a square side, or (height, width)


# --------------------------------------------------------------------------- data
class SyntheticSource(Section):
    """Procedurally rendered identities with long-tailed class sizes (no files needed)."""

    kind: Literal["synthetic"] = "synthetic"
    num_classes: Count = Field(200, ge=2, description="training identities")
    profile: Literal["casia-like", "uniform"] = "casia-like"
    min_images: Count = Field(10, ge=2, description="images of the smallest class")
    max_images: Count = Field(400, ge=2, description="images of the largest class")
    image_size: int = Field(48, ge=16, le=224, description="rendered square size, pixels")
    seed: Seed = 0
    test_images_per_class: Count = Field(5, description="closed-set held-out images")
    verification_identities: Count = Field(
        300, ge=2, description="held-out identities for open-set verification pairs"
    )
    verification_folds: int = Field(10, ge=2, le=100)
    verification_pairs_per_fold: Count = Field(
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

    @property
    def data_folder(self) -> None:
        """No folder: the identities are rendered from the seed."""
        return None


class FileBacked:
    """What the file-backed sources share beyond their fields (a mixin: no fields, so the
    recipe's key order is unchanged)."""

    @property
    def data_folder(self) -> Path:
        """The folder the source reads (its `root` field, as given)."""
        return self.root  # type: ignore[attr-defined]


class ImageFolderSource(FileBacked, Section):
    """`root/<identity>/<image>` (the CASIA-WebFace aligned layout)."""

    kind: Literal["image-folder"] = "image-folder"
    root: RecipePath
    image_size: ImageSize | None = Field(None, description=IMAGE_SIZE_HELP)
    holdout_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="per-class fraction held out as the test split"
    )
    seed: Seed = 0


class RecordSource(FileBacked, Section):
    """InsightFace `train.rec` + `train.idx` (+ `property`), read without mxnet."""

    kind: Literal["record"] = "record"
    root: RecipePath = Field(description="folder holding train.rec and train.idx")
    image_size: ImageSize | None = Field(None, description=IMAGE_SIZE_HELP)
    holdout_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: Seed = 0


TrainSource = Annotated[
    SyntheticSource | ImageFolderSource | RecordSource, Field(discriminator="kind")
]


def _increasing(pair: tuple[float, float], what: str, high: float | None = None) -> None:
    low_end, high_end = pair
    if not 0 < low_end <= high_end or (high is not None and high_end > high):
        upper = f" <= {high:g}" if high is not None else ""
        raise ValueError(f"{what} must be [low, high] with 0 < low <= high{upper}")


class RandomResizedCrop(Section):
    """torchvision's RandomResizedCrop; the crop is resized back to the image's size."""

    scale: tuple[float, float] = Field(
        (0.08, 1.0), description="range of the crop's area, a fraction of the image's"
    )
    ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="range of the crop's aspect ratio, width / height"
    )

    @model_validator(mode="after")
    def _ranges(self) -> RandomResizedCrop:
        _increasing(self.scale, "scale", high=1.0)
        _increasing(self.ratio, "ratio")
        return self


class ColorJitter(Section):
    """torchvision's ColorJitter: factors drawn from [max(0, 1 - x), 1 + x]; hue from
    [-hue, hue] turns. 0 leaves that adjustment out."""

    brightness: float = Field(0.0, ge=0)
    contrast: float = Field(0.0, ge=0)
    saturation: float = Field(0.0, ge=0)
    hue: float = Field(0.0, ge=0, le=0.5)


class RandomGrayscale(Section):
    """torchvision's RandomGrayscale."""

    p: float = Field(0.1, ge=0, le=1, description="probability of a grayscale image")


KernelTaps = Annotated[int, Field(ge=1, le=255)]


class GaussianBlur(Section):
    """torchvision's GaussianBlur (applied to every image, sigma drawn per image)."""

    kernel_size: KernelTaps | tuple[KernelTaps, KernelTaps] = Field(
        description="taps, odd: one size, or [width, height]"
    )
    sigma: tuple[float, float] = Field((0.1, 2.0), description="range of sigma, pixels")

    @model_validator(mode="after")
    def _sizes(self) -> GaussianBlur:
        if any(taps % 2 == 0 for taps in self.taps()):
            raise ValueError("kernel_size must be odd")
        _increasing(self.sigma, "sigma")
        return self

    def taps(self) -> tuple[int, int]:
        """(width, height) of the kernel, in taps."""
        size = self.kernel_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])


class AugmentSection(Section):
    """Training-image augmentation in the loader's workers, after torchvision's transforms of
    the same names (applied in this order); each is off (null) unless given."""

    random_resized_crop: RandomResizedCrop | None = None
    color_jitter: ColorJitter | None = None
    random_grayscale: RandomGrayscale | None = None
    gaussian_blur: GaussianBlur | None = None

    @property
    def enabled(self) -> bool:
        """Whether any transform is on."""
        return any(getattr(self, name) is not None for name in type(self).model_fields)


class DataSection(Section):
    train: TrainSource = Field(default_factory=SyntheticSource)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    num_workers: int | None = Field(
        None, ge=0, description="DataLoader workers per rank; null: min(8, CPUs / ranks on this "
        "machine - 1)"
    )
    strict: bool = Field(False, description="an undecodable image stops the run")


# -------------------------------------------------------------------------- model
class Preprocessing(Section):
    """How a uint8 image becomes the network's input: ``(x / 255 - mean) / std``, channels in
    ``color_order``. Recorded so it travels with the model (run, ONNX metadata); eqm's image
    pipeline applies RGB with mean = std = 0.5 (InsightFace's convention), so other values
    are refused rather than recorded without being applied."""

    color_order: Literal["rgb"] = "rgb"
    mean: float = 0.5
    std: float = 0.5

    @model_validator(mode="after")
    def _applied(self) -> Preprocessing:
        if (self.mean, self.std) != (0.5, 0.5):
            raise ValueError(
                "eqm's image pipeline applies mean 0.5 and std 0.5 only ((x/255 - 0.5)/0.5)"
            )
        return self


class ModelSection(Section):
    backbone: str = Field("tiny", max_length=40)
    embedding_dim: int = Field(512, ge=2, le=65536)
    input_size: tuple[Pixels, Pixels] | None = Field(
        None, description="(height, width) fed to the backbone; null = the data's size"
    )
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    init_from: Path | None = Field(
        None, description="run dir or checkpoint whose backbone weights start a new run"
    )
    init_head: bool | Literal["imprint"] = Field(
        False,
        description="with init_from: true loads its head (same class count); imprint sets "
        "each centre to its class's mean embedding; false: a random head",
    )

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONE_NAMES:
            choices = ", ".join(BACKBONE_NAMES)
            raise ValueError(f"unknown backbone {shown(value)}; choose one of {choices}")
        return value


# --------------------------------------------------------------------------- loss
class LossSection(Section):
    """The margin head. Unset hyperparameters take the loss's documented defaults."""

    name: str = Field("eqm", max_length=40)
    scale: float | None = None
    margin: float | None = None
    m1: float | None = Field(None, description="combined: angle multiplier (SphereFace)")
    m2: float | None = Field(None, description="combined: additive angle, radians (ArcFace)")
    m3: float | None = Field(None, description="combined: cosine subtracted (CosFace)")
    t1: float | None = None
    t2: float | None = None
    gamma: float | None = None
    lambda_base: float | None = None
    lambda_gamma: float | None = None
    lambda_power: float | None = None
    lambda_min: float | None = None
    detach_margin: bool | None = Field(
        None, description="arcface: InsightFace's gradient (margin without gradient)"
    )

    @model_validator(mode="after")
    def _resolve(self) -> LossSection:
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
    milestones: list[float] = Field(
        default_factory=list, max_length=1000, description="epochs (multistep)"
    )
    decay_factor: float = Field(0.1, gt=0, le=1, description="multistep lr factor")
    power: float = Field(2.0, gt=0, description="polynomial decay power")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr / lr (cosine, poly)")
    grad_clip: float | None = Field(None, gt=0, description="max global grad L2 norm")


# -------------------------------------------------------------------------- train
class TrainSection(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=2, description="images per forward pass (per rank)")
    grad_accumulation: int = Field(
        1, ge=1, le=4096, description="forward passes (micro-batches of batch_size) per "
        "optimizer step; an optimizer step sees batch_size x grad_accumulation x ranks images"
    )
    device: str = Field("auto", max_length=40)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 autocast where the GPU or CPU has native bf16; "
        "else fp16 (+ GradScaler) on CUDA, fp32 on the CPU"
    )
    channels_last: bool = Field(
        True, description="NHWC memory format (faster on the CPU and on an H200: eqm bench train)"
    )
    compile: bool = False
    log_every: int = Field(20, ge=1, description="steps between metrics.jsonl step records")
    distributed: Literal["ddp", "sharded"] = "ddp"
    sample_rate: float = Field(1.0, gt=0, le=1, description="Partial FC centre sampling")
    process_group_timeout_s: float = Field(
        1800.0, gt=0, le=7 * 86400, description="seconds a rank waits in a collective "
        "(e.g. for rank 0's evaluation and checkpoint writes) before the job fails"
    )
    tensorboard: bool = Field(
        False, description="also write metrics.jsonl's records as TensorBoard scalars in RUN/tb/ "
        "(needs the [tensorboard] extra)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return validate_device_string(value)


# --------------------------------------------------------------------------- eval
class EvalSection(Section):
    every_epochs: int = Field(1, ge=0, description="0 = no verification during training")
    every_steps: int = Field(
        0, ge=0, description="also verify every N optimizer steps (arcface_torch's `verbose`); "
        "0 = only at epoch ends"
    )
    sets: list[Annotated[str, Field(max_length=MAX_PATH_CHARS)]] = Field(
        default_factory=lambda: ["synthetic"],
        max_length=100,
        description="'synthetic' (held-out identities), lfw, cfp_fp, agedb_30, calfw, cplfw, "
        "or the path of a pairs file or an InsightFace .bin (relative: under data_root first)",
    )
    data_root: RecipePath | None = Field(None, description="folder with <name>.bin / lfw/")
    flip: bool = True
    batch_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _sets_to_verify(self) -> EvalSection:
        if self.every_steps and not self.sets:
            raise ValueError("eval.every_steps needs at least one set in eval.sets")
        return self


class Recipe(Section):
    name: str = "run"
    seed: Seed = 0
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
    shown_loc = [shown(p, 40) if not isinstance(p, str) else p[:40] for p in loc]
    path = ".".join(p for p in shown_loc if p not in ("synthetic", "image-folder", "record"))
    path = path or "<top level>"
    if error["type"] == "extra_forbidden":
        valid = _valid_keys(Recipe, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1])[:40], valid, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; valid keys: {', '.join(valid)}"
        return f"{source}: unknown key '{path}'{suggestion}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{source}: '{path}' is required"
    given = error.get("input")
    quoted = given is not None and not isinstance(given, dict)
    shown_input = f" (got {shown(given)})" if quoted else ""
    return f"{source}: '{path}': {message}{shown_input}"


def recipe_from_mapping(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw mapping; a problem raises `UserError` naming the YAML path."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(_describe(exc.errors()[0], source)[:MAX_MESSAGE_CHARS]) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file. Every problem is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    with path.open("rb") as handle:
        raw = handle.read(MAX_RECIPE_BYTES + 1)
    if len(raw) > MAX_RECIPE_BYTES:
        raise UserError(f"{path} is larger than {MAX_RECIPE_BYTES // 1024} KiB; not a recipe")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start})") from None
    data = recipe_mapping(text, str(path))
    data.setdefault("name", path.stem)
    apply_overrides(data, overrides or [])
    return recipe_from_mapping(data, source=str(path))


def parse_recipe_text(text: str, source: str) -> Recipe:
    """Validate recipe YAML held in memory (e.g. the copy stored in a checkpoint).

    The same bounded, duplicate-refusing reader as `load_recipe`; every problem is a
    `UserError` naming ``source``.
    """
    if len(text) > MAX_RECIPE_BYTES:
        raise UserError(f"{source} is larger than {MAX_RECIPE_BYTES // 1024} KiB; not a recipe")
    return recipe_from_mapping(recipe_mapping(text, source), source=source)


def recipe_mapping(text: str, source: str) -> dict[str, Any]:
    """Recipe YAML text -> its raw mapping, read safely and within bounds.

    Only plain YAML (no tags that build objects); a key repeated in one mapping, an alias
    that refers to itself, more than `MAX_RECIPE_NODES` values once aliases are expanded,
    or nesting deeper than Python's recursion limit is a `UserError` naming ``source``.
    """
    try:
        data = _bounded_yaml(text, source)
    except yaml.MarkedYAMLError as exc:
        raise UserError(_yaml_problem(exc, source)) from None
    except yaml.reader.ReaderError as exc:
        raise UserError(
            f"{source}: not valid YAML text (character #x{exc.character:04x} at position "
            f"{exc.position}: {exc.reason})"
        ) from None
    except RecursionError:
        raise UserError(f"{source}: the YAML is nested too deeply") from None
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def _bounded_yaml(text: str, source: str) -> Any:
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _check_expanded_size(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError, source: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = (exc.problem or "invalid YAML")[:160]
    constructing = isinstance(exc, yaml.constructor.ConstructorError)
    kind = "YAML error" if constructing else "YAML syntax error"
    return f"{source}: {kind}{where}: {problem}"


class _RecipeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key repeated within one mapping (at any level).

    Plain PyYAML keeps the last of two equal keys, so a second ``loss:`` section would
    silently replace the first. Keys merged in with ``<<: *anchor`` may be overridden.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            with contextlib.suppress(TypeError):  # unhashable: the base class reports it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"the key {shown(key, 40)} appears twice", key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node, source: str) -> None:
    """Refuse a document whose values, aliases expanded, exceed `MAX_RECIPE_NODES`.

    Sizes are memoized per node, so the check is linear in the text even for an alias bomb
    (nested aliases that expand to billions of values); an alias inside its own anchor
    (a recursive structure) is refused too.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise UserError(f"{source}: an alias refers to the value that contains it")
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_RECIPE_NODES:
                raise UserError(
                    f"{source}: more than {MAX_RECIPE_NODES:,} values once YAML aliases are "
                    "expanded; a recipe is far smaller (an alias bomb?)"
                )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)
