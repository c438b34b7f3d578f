"""Embedding extraction: the one extractor behind `eqm eval`, `eqm analyze`, `eqm embed` and
training's eval.

uint8 images are batched by a DataLoader, converted/normalized (and resized to the model's
input size when they differ) on the device, run through the backbone in eval mode under
``torch.no_grad`` (`auto`: bf16 or fp16 autocast on CUDA) and returned as L2-normalized float32
CPU tensors.
"""

from __future__ import annotations

import os
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eqmcli.atomic import atomic_write_all, make_folder, temporary_sibling
from eqmcli.data.decode import BadImageLog, DecodeError, decode_file
from eqmcli.data.image_folder import IMAGE_SUFFIXES
from eqmcli.data.transforms import to_model_input
from eqmcli.devices import autocast, autocast_dtype, resolve_device
from eqmcli.errors import UserError, shown
from eqmcli.interop.models import assumed_preprocessing_note, load_model


@dataclass
class Embeddings:
    """L2-normalized embeddings, float32 ``(N, d)`` on the CPU.

    ``plain`` = normalize(f(x)); ``flip`` = normalize(f(x) + f(flip x)) or None when flip
    is off. ``resized_from`` is the images' own (H, W) when they were resized to the
    model's input size (the caller tells the user once), else None.
    """

    plain: torch.Tensor
    flip: torch.Tensor | None
    resized_from: tuple[int, int] | None = None


def _collate(batch: list[Any]) -> list[torch.Tensor]:
    """Keep the uint8 images as a list (sizes may differ in a user's pairs file)."""
    return [item[0] if isinstance(item, (tuple, list)) else item for item in batch]


def _worker_message(text: str) -> str:
    """The original sentence of a `UserError` re-raised from a DataLoader worker."""
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split("UserError: ", 1)[-1]


def _default_workers(n_images: int, batch_size: int) -> int:
    if n_images <= 2 * batch_size:
        return 0  # worker start-up costs more than decoding a couple of batches
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def _rows(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Each row L2-normalized, or the raw rows."""
    return F.normalize(features, dim=1) if normalize else features


def _to_input(
    images: list[torch.Tensor], device: torch.device, size: tuple[int, int]
) -> torch.Tensor:
    """uint8 images -> normalized float32 NHWC (channels_last) batch of ``size`` on ``device``.

    NHWC on every device: the convolutions then run in NHWC whatever the memory format of
    the backbone's weights, so a loaded checkpoint (NCHW) and the model training left behind
    (NHWC) give the same embeddings bit for bit."""
    if all(img.shape == images[0].shape for img in images):
        return to_model_input(torch.stack(images), device, channels_last=True, size=size)
    parts = [to_model_input(img.unsqueeze(0), device, size=size) for img in images]
    return torch.cat(parts).contiguous(memory_format=torch.channels_last)


def _loader(
    images: Dataset, batch_size: int, num_workers: int | None, device: torch.device
) -> DataLoader:
    """Batches of uint8 images in order (lists: sizes may differ); workers by set size."""
    n = len(images)  # type: ignore[arg-type]
    return DataLoader(
        images,
        batch_size=batch_size,
        shuffle=False,
        num_workers=_default_workers(n, batch_size) if num_workers is None else num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _progress_bar(progress: bool) -> Progress:
    """A transient bar on stderr: images done of total, images/s and the time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not progress,
    )


def _size_if_resized(batch: list[torch.Tensor], size: tuple[int, int]) -> tuple[int, int] | None:
    """The (H, W) of the batch's first image whose size differs from ``size``, else None."""
    for image in batch:
        height, width = image.shape[-2:]
        if (int(height), int(width)) != size:
            return (int(height), int(width))
    return None


def _embed_batch(
    backbone: nn.Module,
    batch: list[torch.Tensor],
    *,
    device: torch.device,
    size: tuple[int, int],
    dtype: torch.dtype | None,
    flip: bool,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch's rows on the CPU: (f(x), f(x) + f(flip x) or None), each L2-normalized
    unless not ``normalize``; with ``flip`` the batch runs together with its mirror image."""
    x = _to_input(batch, device, size)
    if flip:
        x = torch.cat((x, torch.flip(x, dims=[3])))
    with autocast(device, dtype):
        features = backbone(x)
    features = features.float()
    if not flip:
        return _rows(features, normalize).cpu(), None
    f_plain, f_mirror = features.chunk(2)
    return _rows(f_plain, normalize).cpu(), _rows(f_plain + f_mirror, normalize).cpu()


def extract_embeddings(
    backbone: nn.Module,
    images: Dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device,
    input_size: tuple[int, int],
    flip: bool = True,
    precision: str = "auto",
    progress: bool = True,
    num_workers: int | None = None,
    description: str = "embedding",
    normalize: bool = True,
) -> Embeddings:
    """Embed every image of ``images`` (items ``uint8 (3,H,W)`` or ``(image, label)``).

    ``input_size`` (H, W) pixels: images of another size are resized (bilinear) to it.
    With ``flip`` each batch is run together with its mirror image. ``precision`` follows
    `eqmcli.devices.autocast_dtype` (``auto`` = bf16 on CUDA, fp16 on GPUs without native
    bf16, fp32 on CPU); batches are fed in NHWC (`_to_input`). The backbone's train/eval
    mode is restored afterwards.
    ``normalize=False`` returns the raw f(x) (and f(x) + f(flip x)) instead of their
    L2-normalized versions.
    """
    device = torch.device(device)
    size = (int(input_size[0]), int(input_size[1]))
    dtype = autocast_dtype(precision, device)
    loader = _loader(images, batch_size, num_workers, device)
    plain_parts: list[torch.Tensor] = []
    flip_parts: list[torch.Tensor] = []
    resized_from: tuple[int, int] | None = None
    was_training = backbone.training
    backbone.eval()
    bar = _progress_bar(progress)
    started = time.perf_counter()
    try:
        with bar, torch.no_grad():
            task = bar.add_task(description, total=len(images), rate="")  # type: ignore[arg-type]
            done = 0
            for batch in loader:
                resized_from = resized_from or _size_if_resized(batch, size)
                plain, fused = _embed_batch(backbone, batch, device=device, size=size,
                                            dtype=dtype, flip=flip, normalize=normalize)
                plain_parts.append(plain)
                if fused is not None:
                    flip_parts.append(fused)
                done += len(batch)
                rate = done / max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=len(batch), rate=f"{rate:,.0f} img/s")
    except UserError as exc:  # raised in a worker: keep the one sentence, drop the traceback
        raise UserError(_worker_message(str(exc))) from None
    finally:
        backbone.train(was_training)
    if not plain_parts:
        empty = torch.zeros((0, 0), dtype=torch.float32)
        return Embeddings(empty, empty.clone() if flip else None, None)
    plain = torch.cat(plain_parts)
    return Embeddings(plain, torch.cat(flip_parts) if flip else None, resized_from)


# ------------------------------------------------------------------ `eqm embed`: files in, .npy out
def list_images(source: str | Path) -> list[Path]:
    """The images to embed: a folder (recursively, sorted; files with an image suffix, and
    symbolic links with one whatever they point to), one image file, or a text file of
    paths (one per line; relative paths are relative to the text file's folder; blank lines
    and ``#`` comments skipped)."""
    source = Path(source)
    if source.is_dir():  # a dangling or looping link is kept: reading it lists it as unreadable
        found = (p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return sorted(p for p in found if p.is_file() or p.is_symlink())
    if not source.is_file():
        raise UserError(f"input not found: {source}")
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return [source]
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{source} is neither an image nor a UTF-8 text file of paths") from None
    names = [line.strip() for line in lines]
    return [source.parent / name for name in names if name and not name.startswith("#")]


#: Unicode categories a path in FEATURES.paths.txt (UTF-8, one per line) may not contain:
#: control characters (newline, tab, ...), undecodable bytes (surrogates), line separators
UNLISTABLE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
SHOWN_NAMES = 5


def check_listable(paths: list[Path]) -> None:
    """`UserError` listing the paths that a one-path-per-line UTF-8 file cannot hold
    unambiguously (`UNLISTABLE_CATEGORIES`), so the rows and the paths always pair up."""
    bad = [
        path for path in paths
        if any(unicodedata.category(c) in UNLISTABLE_CATEGORIES for c in str(path))
    ]
    if bad:
        named = ", ".join(shown(str(path), 120) for path in bad[:SHOWN_NAMES])
        more = f" and {len(bad) - SHOWN_NAMES} more" if len(bad) > SHOWN_NAMES else ""
        raise UserError(
            f"{len(bad)} image path(s) hold a control character (newline, tab, ...) or bytes "
            f"that are not UTF-8, which the one-path-per-line .paths.txt cannot hold: {named}"
            f"{more}; rename them, or list the other images in a text file"
        )


class ImageFiles(Dataset):
    """uint8 ``(3, H, W)`` images decoded from files. An unreadable file is recorded in
    ``bad_log`` (worker-safe) under its index and stands in as a black ``placeholder_size``
    image, so one broken file never stops the loop; the caller drops those rows afterwards."""

    def __init__(
        self, paths: list[Path], placeholder_size: tuple[int, int], bad_log: BadImageLog
    ) -> None:
        self.paths = paths
        self.placeholder_size = placeholder_size
        self.bad_log = bad_log

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            return decode_file(self.paths[index])
        except DecodeError as exc:
            self.bad_log.record(str(index), str(exc))
            return torch.zeros((3, *self.placeholder_size), dtype=torch.uint8)


@dataclass
class EmbedResult:
    """What `embed_images` wrote: ``count`` x ``dim`` float32 features and the two lists."""

    features: Path
    paths_file: Path
    unreadable_file: Path
    count: int
    dim: int
    unreadable: list[str]
    seconds: float
    normalized: bool
    flip: bool
    resized_from: tuple[int, int] | None
    input_size: tuple[int, int]
    note: str | None = None  # the preprocessing assumed for an ONNX model that records none

    @property
    def images_per_second(self) -> float:
        """Images read and embedded per second (the unreadable ones included)."""
        return (self.count + len(self.unreadable)) / max(self.seconds, 1e-9)


def output_lists(features: Path) -> tuple[Path, Path]:
    """``F.npy`` -> (``F.paths.txt``, ``F.unreadable.txt``): the files written beside it."""
    stem = features.with_suffix("")
    return Path(f"{stem}.paths.txt"), Path(f"{stem}.unreadable.txt")


def embed_images(
    model: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    flip: bool = False,
    raw: bool = False,
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = True,
    mean: str | None = None,
    std: str | None = None,
    bgr: bool | None = None,
) -> EmbedResult:
    """Embed the images of ``source`` (see `list_images`) with ``model`` (run directory,
    checkpoint or ``.onnx`` file) into ``out`` (``.npy``, float32 ``N x d``, L2-normalized
    unless ``raw``), with the paths in the same order in ``out``'s ``.paths.txt`` and the
    unreadable images (skipped) in its ``.unreadable.txt`` (``path<TAB>reason``). The three
    files are written to temporary siblings and renamed only when all are written
    (`atomic_write_all`: a full disk leaves none of them). ``mean``/``std``/``bgr`` set
    an ONNX model's preprocessing (`eqmcli.interop.models.load_model`)."""
    out = Path(out)
    if out.suffix != ".npy":
        raise UserError(f"--out {out} must end in .npy")
    paths = list_images(source)
    if not paths:
        raise UserError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    check_listable(paths)
    torch_device = resolve_device(device)
    loaded = load_model(model, torch_device, mean=mean, std=std, bgr=bgr)
    make_folder(out.parent, f"the folder of --out {out}")
    log_path = temporary_sibling(out.with_suffix(".unreadable"))
    started = time.perf_counter()
    try:
        dataset = ImageFiles(paths, loaded.input_size, BadImageLog(log_path))
        emb = extract_embeddings(
            loaded.backbone, dataset, batch_size=batch_size, device=torch_device,
            input_size=loaded.input_size, flip=flip, progress=progress, normalize=not raw,
        )
        reasons = _reasons(log_path)
    finally:
        log_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    features = emb.flip if flip and emb.flip is not None else emb.plain
    keep = [i for i in range(len(paths)) if i not in reasons]
    array = features[keep].numpy().astype(np.float32, copy=False)
    unreadable = [str(paths[i]) for i in sorted(reasons)]
    paths_file, unreadable_file = output_lists(out)
    listed = "".join(f"{paths[i]}\n" for i in keep).encode("utf-8")
    skipped = "".join(f"{paths[i]}\t{reasons[i]}\n" for i in sorted(reasons)).encode("utf-8")
    atomic_write_all([  # the three files appear together or not at all (e.g. a full disk)
        (out, lambda stream: np.save(stream, array)),
        (paths_file, lambda stream: stream.write(listed)),
        (unreadable_file, lambda stream: stream.write(skipped)),
    ])
    return EmbedResult(
        features=out, paths_file=paths_file, unreadable_file=unreadable_file, count=len(keep),
        dim=int(array.shape[1]) if array.ndim == 2 else 0, unreadable=unreadable,
        seconds=seconds, normalized=not raw, flip=flip, resized_from=emb.resized_from,
        input_size=loaded.input_size, note=assumed_preprocessing_note(loaded),
    )


def _reasons(log_path: Path) -> dict[int, str]:
    """image index -> reason from the `BadImageLog` file of `ImageFiles` (first reason of
    each index)."""
    if not log_path.is_file():
        return {}
    reasons: dict[int, str] = {}
    for line in log_path.read_text().splitlines():
        index, _, reason = line.partition("\t")
        reasons.setdefault(int(index), reason)
    return reasons
