"""Embedding extraction: the one extractor behind `eqm eval`, `eqm analyze`, `eqm embed`,
training's eval and the benchmark protocols.

uint8 images are batched by a DataLoader, converted/normalized (and resized to the model's
input size when they differ) on the device, run through the backbone in eval mode under
``torch.no_grad`` (`auto`: bf16 or fp16 autocast on CUDA) and returned as L2-normalized float32
CPU tensors.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

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

from eqmcli.data.transforms import to_model_input
from eqmcli.devices import autocast, autocast_dtype
from eqmcli.errors import UserError


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
