"""InsightFace ``arcface_torch`` weights in and out of eqm runs, through explicit name tables.

Facts used (deepinsight/insightface, ``recognition/arcface_torch``):

- ``backbones/iresnet.py``: ``conv1``/``bn1``/``prelu`` stem; ``layer1..4`` of ``IBasicBlock``
  units (``bn1``, ``conv1``, ``bn2``, ``prelu``, ``conv2`` with the stride, ``bn3``; the first
  unit of each layer has ``downsample.0`` conv1x1 + ``downsample.1`` BN); then ``bn2`` (BN2d),
  flatten, dropout, ``fc`` (Linear with bias, from a fixed 7x7 map) and ``features``
  (BatchNorm1d). BN eps 1e-5. ``fp16`` only autocasts the trunk; ``dropout`` is 0 in
  ``train_v2.py``. eqm's ``iresnet*`` computes the same function.
- ``backbones/mobilefacenet.py`` (``get_mbf``: ``scale=2``, ``blocks=(1, 4, 6, 2)``):
  ``layers[0..7]`` = two ``ConvBlock``s, then (``DepthWise`` stride 2, ``Residual``) x 3,
  then ``conv_sep`` and the GDC ``features`` (depthwise 7x7 ``LinearBlock``, flatten,
  ``Linear`` without bias, BatchNorm1d). eqm's ``mbf`` backbone has that layout.
- ``train_v2.py``: ``model.pt`` / the model zoo's ``backbone.pth`` is the backbone's
  ``state_dict``; with ``save_all_states`` every rank writes ``checkpoint_gpu_<rank>.pt`` =
  {``epoch``, ``global_step``, ``state_dict_backbone``, ``state_dict_softmax_fc``,
  ``state_optimizer``, ``state_lr_scheduler``}.
- ``partial_fc_v2.py``: rank r of W holds rows [start_r, start_r + n_r) of the (C, d) class
  centres, n_r = C // W + (r < C % W), start_r = (C // W) r + min(r, C % W): the shards
  concatenated in rank order are the centres in class order.
- The margin head is ``CombinedMarginLoss(64, *margin_list)``, default (1.0, 0.5, 0.0):
  ArcFace with s = 64, m = 0.5, which the imported run records as its loss.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eqmcli.atomic import atomic_write, atomic_write_text, check_output_file, write_json
from eqmcli.backbones import build_backbone
from eqmcli.backbones.iresnet import IRESNET_LAYERS
from eqmcli.data.record import is_record_source
from eqmcli.errors import UserError
from eqmcli.interop.tensors import remap_tensors
from eqmcli.losses import build_head
from eqmcli.run.checkpoint import read_torch_file, save_checkpoint, torch_save
from eqmcli.run.recipe import (
    DataSection,
    EvalSection,
    ImageFolderSource,
    LossSection,
    ModelSection,
    Recipe,
    RecordSource,
)
from eqmcli.run.rundir import RunPaths, find_checkpoint, load_trained

#: ``--arch`` -> eqm backbone
ARCHS: dict[str, str] = {
    "r18": "iresnet18",
    "r34": "iresnet34",
    "r50": "iresnet50",
    "r100": "iresnet100",
    "mbf": "mbf",
}
INSIGHTFACE_INPUT = 112  # arcface_torch's fc / GDC expect a 7x7 map: 112x112 crops
IMPORT_NOTE = "imported.json"
SHARD_NAME = re.compile(r"checkpoint_gpu_(\d{1,9})\.pt")
ARCFACE_LOSS = LossSection(name="arcface", scale=64.0, margin=0.5)

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
#: tensors of each kind of module
_TENSORS: dict[str, tuple[str, ...]] = {
    "conv": ("weight",),
    "bn": _BN,
    "prelu": ("weight",),
    "linear": ("weight",),
    "linear+bias": ("weight", "bias"),
}
Module = tuple[str, str, str]  # (arcface_torch module, eqm module, kind)


def _iresnet_modules(depth: int) -> list[Module]:
    modules: list[Module] = [("conv1", "stem.0", "conv"), ("bn1", "stem.1", "bn")]
    modules.append(("prelu", "stem.2", "prelu"))
    unit_parts = (("bn1", "bn"), ("conv1", "conv"), ("bn2", "bn"), ("prelu", "prelu"))
    unit_parts += (("conv2", "conv"), ("bn3", "bn"))
    for stage, units in enumerate(IRESNET_LAYERS[depth]):
        for unit in range(units):
            theirs, ours = f"layer{stage + 1}.{unit}", f"stages.{stage}.{unit}"
            for index, (name, kind) in enumerate(unit_parts):
                modules.append((f"{theirs}.{name}", f"{ours}.body.{index}", kind))
            if unit == 0:  # stride 2 and new width: a projection shortcut
                modules.append((f"{theirs}.downsample.0", f"{ours}.shortcut.0", "conv"))
                modules.append((f"{theirs}.downsample.1", f"{ours}.shortcut.1", "bn"))
    modules += [("bn2", "head.bn", "bn"), ("fc", "head.fc", "linear+bias")]
    modules.append(("features", "head.features", "bn"))
    return modules


def _conv_block(theirs: str, ours: str) -> list[Module]:
    """arcface_torch ``ConvBlock`` (``layers`` = conv, BN, PReLU) -> eqm ``conv_bn_prelu``."""
    return [
        (f"{theirs}.layers.0", f"{ours}.0", "conv"),
        (f"{theirs}.layers.1", f"{ours}.1", "bn"),
        (f"{theirs}.layers.2", f"{ours}.2", "prelu"),
    ]


def _depthwise(theirs: str, ours: str) -> list[Module]:
    """arcface_torch ``DepthWise`` (ConvBlock, ConvBlock, LinearBlock) -> eqm ``Bottleneck``."""
    return [
        *_conv_block(f"{theirs}.layers.0", f"{ours}.body.0"),
        *_conv_block(f"{theirs}.layers.1", f"{ours}.body.1"),
        (f"{theirs}.layers.2.layers.0", f"{ours}.body.2", "conv"),
        (f"{theirs}.layers.2.layers.1", f"{ours}.body.3", "bn"),
    ]


def _mbf_modules(residual_blocks: tuple[int, int, int] = (4, 6, 2)) -> list[Module]:
    modules = _conv_block("layers.0", "features.0") + _conv_block("layers.1", "features.1")
    unit = 2  # eqm's features[2:] are the bottlenecks, in order
    for stage, repeats in enumerate(residual_blocks):
        modules += _depthwise(f"layers.{2 + 2 * stage}", f"features.{unit}")
        unit += 1
        for block in range(repeats):
            modules += _depthwise(f"layers.{3 + 2 * stage}.layers.{block}", f"features.{unit}")
            unit += 1
    modules += _conv_block("conv_sep", f"features.{unit}")
    modules += [
        ("features.layers.0.layers.0", "gdc.0", "conv"),
        ("features.layers.0.layers.1", "gdc.1", "bn"),
        ("features.layers.2", "linear", "linear"),
        ("features.layers.3", "bn", "bn"),
    ]
    return modules


def name_table(arch: str) -> dict[str, str]:
    """arcface_torch tensor name -> eqm tensor name, for every tensor of ``arch``'s backbone."""
    modules = _mbf_modules() if arch == "mbf" else _iresnet_modules(int(arch.removeprefix("r")))
    return {
        f"{theirs}.{tensor}": f"{ours}.{tensor}"
        for theirs, ours, kind in modules
        for tensor in _TENSORS[kind]
    }


def check_arch(arch: str) -> str:
    """The eqm backbone of ``--arch`` (a `UserError` listing the choices otherwise)."""
    if arch not in ARCHS:
        raise UserError(f"--arch {arch[:40]!r} is not one of {', '.join(ARCHS)}")
    return ARCHS[arch]


def read_backbone_state(path: Path) -> dict[str, torch.Tensor]:
    """The backbone ``state_dict`` in ``backbone.pth`` / ``model.pt`` (or the
    ``state_dict_backbone`` of a ``checkpoint_gpu_<rank>.pt``). Keys saved through a
    DistributedDataParallel wrapper (all prefixed ``module.``) lose that prefix."""
    state = read_torch_file(path, "PyTorch weights file")
    if isinstance(state, Mapping) and "state_dict_backbone" in state:
        state = state["state_dict_backbone"]
    if not isinstance(state, Mapping) or not state or not all(isinstance(k, str) for k in state):
        raise UserError(f"{path} holds no state_dict (a mapping of tensor names to tensors)")
    if all(name.startswith("module.") for name in state):
        state = {name.removeprefix("module."): value for name, value in state.items()}
    return dict(state)


def head_shard_files(pattern: str | Path) -> list[Path]:
    """The ``checkpoint_gpu_<rank>.pt`` files matched by ``pattern`` (or in a folder), in rank
    order 0..W-1; a file without a rank in its name, a repeated or a missing rank is refused."""
    text = str(pattern)
    if Path(text).is_dir():
        text = str(Path(text) / "checkpoint_gpu_*.pt")
    files = [Path(name) for name in glob.glob(text)]
    if not files:
        raise UserError(f"--head {text[:200]}: no file matches")
    by_rank: dict[int, Path] = {}
    for path in sorted(files):
        match = SHARD_NAME.fullmatch(path.name)
        if match is None:
            raise UserError(
                f"{path} is not named checkpoint_gpu_<rank>.pt, so its rank (and row order) "
                "is unknown"
            )
        rank = int(match.group(1))  # at most 9 digits: no huge number is ever parsed
        if rank in by_rank:
            raise UserError(f"{by_rank[rank]} and {path} both name rank {rank}; keep one")
        by_rank[rank] = path
    # ranks 0..W-1 for W files: the first rank absent below W (or W itself when none is);
    # counted by the number of files, never by the largest rank a name claims
    missing = next(rank for rank in range(len(by_rank) + 1) if rank not in by_rank)
    if missing < len(by_rank):
        raise UserError(
            f"the head shard of rank {missing} (checkpoint_gpu_{missing}.pt) is missing "
            f"beside {files[0]}; the largest rank given is {max(by_rank)}"
        )
    return [by_rank[rank] for rank in range(len(by_rank))]


def read_head_shards(files: list[Path], embedding_dim: int) -> torch.Tensor:
    """The (C, d) class centres of a Partial FC run: the rank shards concatenated in rank
    order, each checked against Partial FC's split of C classes over W ranks."""
    parts = []
    for path in files:
        state = read_torch_file(path, "PyTorch weights file")
        fc = state.get("state_dict_softmax_fc") if isinstance(state, Mapping) else None
        weight = fc.get("weight") if isinstance(fc, Mapping) else None
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise UserError(
                f"{path} has no state_dict_softmax_fc weight; pass the checkpoint_gpu_<rank>.pt "
                "files arcface_torch writes with save_all_states"
            )
        if weight.shape[1] != embedding_dim:
            raise UserError(
                f"{path}: tensor 'state_dict_softmax_fc.weight' has {weight.shape[1]} columns "
                f"but the embedding has {embedding_dim} (--embedding-dim)"
            )
        parts.append(weight.detach().float())
    total, world = sum(p.shape[0] for p in parts), len(parts)
    for rank, (path, part) in enumerate(zip(files, parts, strict=True)):
        expected = total // world + int(rank < total % world)
        if part.shape[0] != expected:
            raise UserError(
                f"{path}: rank {rank} holds {part.shape[0]} class centres, but Partial FC gives "
                f"rank {rank} of {world} {expected} of the {total} classes; are all shards from "
                "one run?"
            )
    return torch.cat(parts)


@dataclass
class ImportResult:
    """What `import_insightface` wrote."""

    run_dir: Path
    checkpoint: Path
    backbone: str
    tensors: int
    num_classes: int | None
    head_files: list[Path] = field(default_factory=list)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _empty_output(out: Path) -> RunPaths:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new one")
    return RunPaths(out)


def _remove_contents(folder: Path, *, keep_folder: bool) -> None:
    """Remove what a failed import wrote into ``folder`` (and ``folder`` itself unless
    ``keep_folder``)."""
    if not folder.is_dir():
        return
    if not keep_folder:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _import_note(
    weights: Path, arch: str, recipe: Recipe, tensors: int, head_files: list[Path],
    num_classes: int | None,
) -> dict[str, Any]:
    """Where an imported run's weights came from (`RUN/<IMPORT_NOTE>`)."""
    return {
        "source": "InsightFace arcface_torch",
        "weights": str(weights.resolve()),
        "sha256": _sha256(weights),
        "arch": arch,
        "backbone": recipe.model.backbone,
        "tensors": tensors,
        "head_shards": [str(p.resolve()) for p in head_files],
        "num_classes": num_classes,
        "preprocessing": recipe.model.preprocessing.model_dump(),
        "loss": "arcface s=64 m=0.5, arcface_torch's default margin_list (1.0, 0.5, 0.0)",
        "imported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def import_insightface(
    weights: str | Path,
    arch: str,
    out: str | Path,
    *,
    head: str | Path | None = None,
    embedding_dim: int = 512,
    input_size: int = INSIGHTFACE_INPUT,
    data: Any = None,
) -> ImportResult:
    """Turn an arcface_torch backbone (+ optional Partial FC shards) into an eqm run directory.

    ``input_size`` (pixels, square). ``data`` (a `eqmcli.run.recipe` training source, optional)
    is recorded as ``data.train`` so that ``eqm analyze RUN`` reads the model's training data.
    Nothing is written unless every tensor maps with the right shape.
    """
    weights, out = Path(weights), Path(out)
    backbone_name = check_arch(arch)
    paths = _empty_output(out)
    backbone = build_backbone(
        backbone_name, embedding_dim=embedding_dim, input_size=(input_size, input_size)
    )
    target = (
        f"eqm's {backbone_name} ({arch}) at {input_size}x{input_size} px with a "
        f"{embedding_dim}-d embedding"
    )
    mapped = remap_tensors(
        read_backbone_state(weights), name_table(arch), backbone.state_dict(),
        source_name=str(weights), target_name=target,
    )
    backbone.load_state_dict(mapped)
    files = head_shard_files(head) if head is not None else []
    centres = read_head_shards(files, embedding_dim) if files else None
    recipe = Recipe(
        name=out.name or "imported",
        model=ModelSection(
            backbone=backbone_name, embedding_dim=embedding_dim,
            input_size=(input_size, input_size),
        ),
        loss=ARCFACE_LOSS,
        eval=EvalSection(sets=["lfw"]),
        data=DataSection(train=data) if data is not None else DataSection(),
    )
    state: dict[str, Any] = {
        "backbone": backbone.state_dict(),
        "input_size": [input_size, input_size],
        "recipe": recipe.to_yaml(),
        "epoch": 0,
        "step": 0,
        "imported_from": str(weights),
    }
    if centres is not None:
        classifier = build_head(
            "arcface", num_classes=centres.shape[0], embedding_dim=embedding_dim,
            **ARCFACE_LOSS.hyperparameters(),
        )
        classifier.load_state_dict({"weight": centres})
        state["head"] = classifier.state_dict()
        state["num_classes"] = int(centres.shape[0])
    note = _import_note(weights, arch, recipe, len(mapped), files, state.get("num_classes"))
    existed = paths.root.exists()  # then empty (`_empty_output`)
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.mark("eqm import insightface")
        save_checkpoint(state, paths.last)
        write_json(paths.root / IMPORT_NOTE, note)
        atomic_write_text(paths.recipe, recipe.to_yaml())
    except BaseException:  # e.g. a full disk: no half-made run directory stays behind
        _remove_contents(paths.root, keep_folder=existed)
        raise
    return ImportResult(
        run_dir=out, checkpoint=paths.last, backbone=backbone_name, tensors=len(mapped),
        num_classes=state.get("num_classes"), head_files=files,
    )


def arch_of_backbone(backbone: str) -> str | None:
    """The arcface_torch ``--arch`` name of an eqm backbone, or None when there is none."""
    return next((arch for arch, name in ARCHS.items() if name == backbone), None)


def export_insightface(
    run: str | Path, out: str | Path, *, force: bool = False
) -> tuple[Path, int]:
    """Write a run's backbone as an arcface_torch ``state_dict`` (``backbone.pth``).

    Only the architectures arcface_torch has (iresnet18/34/50/100, mbf) at 112x112 px (its fc
    and GDC expect a 7x7 map). ``out`` may not be the run's checkpoint, nor (without
    ``force``) an existing file (`check_output_file`). Returns (path, number of tensors).
    """
    path = Path(out)
    checkpoint = find_checkpoint(run)
    check_output_file(path, "--insightface", reads=[checkpoint], force=force)
    trained = load_trained(checkpoint)
    name = trained.recipe.model.backbone
    arch = arch_of_backbone(name)
    if arch is None:
        choices = ", ".join(ARCHS.values())
        raise UserError(f"arcface_torch has no {name} backbone; --insightface takes {choices}")
    if trained.input_size != (INSIGHTFACE_INPUT, INSIGHTFACE_INPUT):
        h, w = trained.input_size
        raise UserError(
            f"{trained.checkpoint_path} is a {h}x{w} model; arcface_torch's {arch} takes "
            f"{INSIGHTFACE_INPUT}x{INSIGHTFACE_INPUT} crops only"
        )
    inverse = {ours: theirs for theirs, ours in name_table(arch).items()}
    ours = trained.backbone.state_dict()
    expected = {theirs: ours[name] for name, theirs in inverse.items()}
    state = remap_tensors(
        ours, inverse, expected, source_name=str(trained.checkpoint_path),
        target_name=f"arcface_torch's {arch}",
    )
    atomic_write(path, lambda stream: torch_save(state, stream))
    return path, len(state)


def training_source(path: str | Path) -> RecordSource | ImageFolderSource:
    """The model's training data for ``eqm analyze``: a folder with InsightFace ``train.rec``
    + ``train.idx`` (a RecordIO source, `is_record_source`), else an image folder
    ``root/<identity>/<image>``."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder (train.rec + train.idx, or root/<id>/)")
    if is_record_source(root):
        return RecordSource(root=root)
    return ImageFolderSource(root=root)
