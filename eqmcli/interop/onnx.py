"""ONNX in and out: export a run's backbone, and run an ``.onnx`` file as a backbone.

The exported graph is the backbone alone: input ``input``, float32 ``N x 3 x H x W`` already
normalized as the run's recipe says (``(x/255 - 0.5)/0.5``, RGB), output ``embedding``,
float32 ``N x d`` (raw, not L2-normalized). The metadata (``eqm.*`` keys) records the colour
order, normalization, input size and embedding size, and the run's resolved recipe, so
``eqm eval model.onnx`` finds the run's own verification pairs.

onnx, onnxruntime and onnxscript are the optional ``[onnx]`` extra; without them every
function here raises a `UserError` that says how to install it.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqmcli.atomic import check_output_file, storage_error, temporary_sibling
from eqmcli.data.transforms import to_model_input
from eqmcli.errors import UserError
from eqmcli.run.recipe import EvalSection, Recipe
from eqmcli.run.rundir import Trained, find_checkpoint, load_trained, recipe_from_state

INSTALL_HINT = 'pip install "eqmcli[onnx]" (or pip install -e ".[onnx]" in a checkout)'
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4  # max |onnxruntime - torch| on the raw embedding, fp32
RECIPE_KEY = "eqm.recipe"


def require_onnx() -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules, or a `UserError` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError(f"ONNX support needs the optional [onnx] extra: {INSTALL_HINT}") from None
    return onnx, onnxruntime


def model_metadata(trained: Trained) -> dict[str, str]:
    """The ``eqm.*`` metadata of an exported run: preprocessing, sizes, provenance, recipe."""
    model = trained.recipe.model
    pre = model.preprocessing
    height, width = trained.input_size
    return {
        "eqm.color_order": pre.color_order.upper(),
        "eqm.normalization": f"(x / 255 - {pre.mean}) / {pre.std}",
        "eqm.mean": ",".join([str(pre.mean)] * 3),
        "eqm.std": ",".join([str(pre.std)] * 3),
        "eqm.input_layout": "NCHW float32",
        "eqm.input_size": f"{height},{width}",
        "eqm.embedding_dim": str(model.embedding_dim),
        "eqm.output": "raw embedding (not L2-normalized)",
        "eqm.backbone": model.backbone,
        "eqm.source": str(trained.checkpoint_path),
        RECIPE_KEY: trained.recipe.to_yaml(),
    }


@dataclass(frozen=True)
class InputPreprocessing:
    """How uint8 pixels x become a model's input: ``(x / 255 - mean) / std`` per channel, the
    channels in ``color_order`` ("RGB" or "BGR"; ``mean`` and ``std`` listed in that order).

    ``source`` says where it was read: ``recipe`` (a run), ``metadata`` (an ONNX file's
    ``eqm.*`` keys), ``flags`` (``--mean/--std/--bgr``) or ``assumed`` (eqm's own RGB,
    mean 0.5, std 0.5, for an ONNX file that records none).
    """

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    color_order: str = "RGB"
    source: str = "assumed"

    @property
    def is_standard(self) -> bool:
        """True for eqm's own pipeline (RGB, mean 0.5, std 0.5): nothing to convert."""
        return (self.color_order, self.mean, self.std) == ("RGB", (0.5,) * 3, (0.5,) * 3)

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessing`` entry of a result JSON."""
        return {"color_order": self.color_order, "mean": list(self.mean),
                "std": list(self.std), "source": self.source}

    def describe(self) -> str:
        """E.g. ``RGB, (x/255 - 0.5)/0.5`` (one mean/std when the channels agree)."""
        def values(triple: tuple[float, float, float]) -> str:
            return f"{triple[0]:g}" if len(set(triple)) == 1 else "[" + ",".join(
                f"{v:g}" for v in triple) + "]"
        return f"{self.color_order}, (x/255 - {values(self.mean)})/{values(self.std)}"

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        """eqm's standard input ``(x/255 - 0.5)/0.5`` (RGB, ``(B, 3, H, W)``) -> this one."""
        if self.is_standard:
            return x
        unit = (x + 1.0) / 2.0  # x / 255
        if self.color_order == "BGR":
            unit = unit.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (unit - mean) / std


def _triple(text: str, what: str) -> tuple[float, float, float]:
    """``"0.5"`` or ``"0.485,0.456,0.406"`` -> three floats in [0, 1] (std: above 0)."""
    try:
        values = [float(part) for part in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise UserError(f"{what} {str(text)[:60]!r} is not one number or three "
                        "comma-separated numbers")
    low = 0.0 if what.endswith("mean") else 1e-6
    if not all(low <= v <= 1.0 for v in values):
        raise UserError(
            f"{what} {str(text)[:60]!r} is not a fraction of 255 in [{low:g}, 1]: "
            "preprocessing is (x/255 - mean)/std, so 127.5 pixels is 0.5"
        )
    return values[0], values[1], values[2]


def _color_order(text: str, what: str) -> str:
    order = str(text).strip().upper()
    if order not in ("RGB", "BGR"):
        raise UserError(f"{what} {str(text)[:20]!r} is neither RGB nor BGR")
    return order


def resolve_preprocessing(
    metadata: dict[str, str], source: str, *, mean: str | None = None,
    std: str | None = None, bgr: bool | None = None,
) -> InputPreprocessing:
    """An ONNX model's preprocessing: each of ``mean``/``std``/``bgr`` given overrides the
    file's ``eqm.mean``/``eqm.std``/``eqm.color_order`` metadata; what neither gives is
    eqm's own (RGB, 0.5, 0.5). ``source`` names the file in messages."""
    default = InputPreprocessing()
    found_mean, found_std, found_order = default.mean, default.std, default.color_order
    origin = "assumed"
    keys = {"eqm.mean", "eqm.std", "eqm.color_order"}
    if keys & set(metadata):
        origin = "metadata"
        if "eqm.mean" in metadata:
            found_mean = _triple(metadata["eqm.mean"], f"{source}: metadata eqm.mean")
        if "eqm.std" in metadata:
            found_std = _triple(metadata["eqm.std"], f"{source}: metadata eqm.std")
        if "eqm.color_order" in metadata:
            found_order = _color_order(metadata["eqm.color_order"],
                                       f"{source}: metadata eqm.color_order")
    if mean is not None or std is not None or bgr is not None:
        origin = "flags"
        found_mean = found_mean if mean is None else _triple(mean, "--mean")
        found_std = found_std if std is None else _triple(std, "--std")
        found_order = found_order if bgr is None else ("BGR" if bgr else "RGB")
    return InputPreprocessing(found_mean, found_std, found_order, origin)


@dataclass
class OnnxExport:
    """What `export_onnx` wrote and how closely onnxruntime reproduces torch (fp32)."""

    path: Path
    opset: int
    batch: int | None  # None: dynamic batch size
    input_size: tuple[int, int]
    embedding_dim: int
    max_abs_diff: float
    checked_images: int
    metadata: dict[str, str]


def _parse_batch(batch: str | int) -> int | None:
    if isinstance(batch, int) or str(batch).isdigit():
        if int(batch) < 1:
            raise UserError(f"--batch must be 'dynamic' or a positive integer, got {batch}")
        return int(batch)
    if batch != "dynamic":
        raise UserError(f"--batch must be 'dynamic' or a positive integer, got {str(batch)[:40]!r}")
    return None


def _torch_export(backbone: nn.Module, path: Path, example: torch.Tensor, opset: int,
                  dynamic: bool) -> None:
    """torch.onnx's exporter (torch.export based), one self-contained file at ``path``."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic else None
    # quiet: "torchvision is not installed", tracebacks of a failed opset conversion (checked
    # by the caller, which says it in one sentence)
    logs = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                backbone, (example,), str(path), input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True,
                external_data=False, dynamic_shapes=shapes, verbose=False,
            )
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)


def _session(path: Path, ort: Any) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _parity(backbone: nn.Module, session: Any, sizes: list[int], input_size: tuple[int, int],
            seed: int) -> tuple[float, int]:
    """max |onnxruntime - torch| over random uint8 images in batches of ``sizes``."""
    generator = torch.Generator().manual_seed(seed)
    worst, count = 0.0, 0
    for size in sizes:
        images = torch.randint(0, 256, (size, 3, *input_size), dtype=torch.uint8,
                               generator=generator)
        x = to_model_input(images, "cpu")
        with torch.no_grad():
            expected = backbone(x)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        worst = max(worst, float((torch.from_numpy(got) - expected).abs().max()))
        count += size
    return worst, count


def export_onnx(
    run: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    batch: str | int = "dynamic",
    seed: int = 0,
    force: bool = False,
) -> OnnxExport:
    """Export a run's backbone (fp32, eval mode) to ``out``, verified with onnxruntime
    (see `export_backbone`), with the run's `model_metadata`. ``out`` may not be the run's
    checkpoint, nor (without ``force``) an existing file (`check_output_file`)."""
    require_onnx()
    fixed = _parse_batch(batch)
    out = Path(out)
    checkpoint = find_checkpoint(run)
    check_output_file(out, "--onnx", reads=[checkpoint], force=force)
    trained = load_trained(checkpoint, "cpu")
    return export_backbone(
        trained.backbone, trained.input_size, out, model_metadata(trained), opset=opset,
        batch=fixed, seed=seed, source=str(trained.checkpoint_path),
    )


def export_backbone(
    backbone: nn.Module,
    input_size: tuple[int, int],
    out: Path,
    metadata: dict[str, str],
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    seed: int = 0,
    source: str = "the backbone",
) -> OnnxExport:
    """Export ``backbone`` (fp32, eval mode; ``batch`` None = dynamic) with ``metadata``.

    The file is written to a temporary sibling and renamed into place only after the
    metadata is added, the model passes ``onnx.checker`` and onnxruntime's embeddings of
    random images are within `PARITY_TOLERANCE` of torch's. A failed write (disk full,
    no permission) is a `StorageError`.
    """
    onnx, ort = require_onnx()
    backbone = backbone.float().eval()
    temporary = temporary_sibling(out)
    try:
        example = torch.zeros((batch or 2, 3, *input_size))
        _torch_export(backbone, temporary, example, opset, dynamic=batch is None)
        model = onnx.load(str(temporary))
        written = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if written != opset:  # the exporter keeps its own opset when it cannot convert
            raise UserError(
                f"torch's ONNX exporter could not convert {source} to opset {opset} (it "
                f"wrote opset {written}); nothing was written: choose another --opset"
            )
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        onnx.save(model, str(temporary))
        sizes = [batch] if batch else [1, 4]
        worst, count = _parity(backbone, _session(temporary, ort), sizes, input_size, seed)
        if not worst <= PARITY_TOLERANCE:
            raise UserError(
                f"the ONNX export of {source} differs from torch by {worst:.2e} "
                f"(> {PARITY_TOLERANCE:g}) on random images; nothing was written"
            )
        os.replace(temporary, out)
    except OSError as error:
        raise storage_error(out, error) from None
    finally:
        temporary.unlink(missing_ok=True)
    return OnnxExport(
        path=out, opset=opset, batch=batch, input_size=input_size,
        embedding_dim=int(backbone.embedding_dim), max_abs_diff=worst, checked_images=count,
        metadata=metadata,
    )


class OnnxBackbone(nn.Module):
    """An ``.onnx`` embedding model run by onnxruntime on the CPU, used like a backbone:
    float ``(B, 3, H, W)`` -> ``(B, d)`` on the input's device. A model exported with a fixed
    batch size gets its input in chunks of that size (the last one padded). The input is
    eqm's standard ``(x/255 - 0.5)/0.5`` RGB; ``preprocessing`` (default: the file's
    metadata, else eqm's own) converts it to what the model expects."""

    def __init__(self, path: str | Path, preprocessing: InputPreprocessing | None = None) -> None:
        super().__init__()
        _, ort = require_onnx()
        self.path = Path(path)
        try:
            self.session = _session(self.path, ort)
        except Exception as exc:  # onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise UserError(f"{self.path} is not a readable ONNX model ({first})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or len(outputs) < 1 or len(shape) != 4 or shape[1] != 3:
            raise UserError(f"{self.path} is not an embedding model (one N x 3 x H x W input)")
        if not all(isinstance(n, int) for n in shape[2:]):
            raise UserError(f"{self.path} has no fixed input height and width")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.input_size = (int(shape[2]), int(shape[3]))
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.preprocessing = preprocessing or resolve_preprocessing(self.metadata, str(self.path))

    def _run(self, array: Any) -> Any:
        return self.session.run([self.output_name], {self.input_name: array})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocessing.convert(x.detach().float())
        array = x.contiguous().cpu().numpy()
        if self.fixed_batch is None:
            return torch.from_numpy(self._run(array)).to(x.device)
        n, step = array.shape[0], self.fixed_batch
        parts = []
        for start in range(0, n, step):
            chunk = torch.from_numpy(array[start : start + step])
            padded = torch.cat([chunk, chunk.new_zeros((step - len(chunk), *chunk.shape[1:]))])
            parts.append(torch.from_numpy(self._run(padded.numpy()))[: len(chunk)])
        return torch.cat(parts).to(x.device)


def load_onnx(
    path: str | Path, *, mean: str | None = None, std: str | None = None,
    bgr: bool | None = None,
) -> Trained:
    """An ``.onnx`` file as a `Trained` model (no head). Its recipe is the one stored by
    `export_onnx`; a model from elsewhere gets a recipe with no eval sets, so ``eqm eval``
    asks for ``--lfw``/``--pairs``. ``mean``/``std``/``bgr`` override the preprocessing
    its metadata records (`resolve_preprocessing`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}")
    backbone = OnnxBackbone(path)
    backbone.preprocessing = resolve_preprocessing(
        backbone.metadata, str(path), mean=mean, std=std, bgr=bgr)
    stored = backbone.metadata.get(RECIPE_KEY)
    if stored:
        recipe = recipe_from_state({"recipe": stored}, str(path))
    else:
        recipe = Recipe(eval=EvalSection(sets=[]))
    return Trained(
        backbone=backbone, head=None, recipe=recipe, run_dir=path.parent, checkpoint_path=path,
        input_size=backbone.input_size, epoch=0, step=0,
    )
