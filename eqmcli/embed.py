"""Embedding extraction: the one extractor behind `eqm eval`, `eqm analyze` and training's eval.

uint8 images are batched by a DataLoader, converted/normalized (and resized to the model's
input size when they differ) on the device, run through the backbone in eval mode under
``torch.no_grad`` (bf16 autocast on CUDA by default) and returned as L2-normalized float32
CPU tensors.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

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


def _to_input(
    images: list[torch.Tensor],
    device: torch.device,
    size: tuple[int, int],
    channels_last: bool,
) -> torch.Tensor:
    """uint8 images -> normalized float32 batch of ``size`` on ``device``."""
    from eqmcli.data.transforms import to_model_input

    if all(img.shape == images[0].shape for img in images):
        return to_model_input(torch.stack(images), device, channels_last=channels_last, size=size)
    parts = [to_model_input(img.unsqueeze(0), device, size=size) for img in images]
    batch = torch.cat(parts)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


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
) -> Embeddings:
    """Embed every image of ``images`` (items ``uint8 (3,H,W)`` or ``(image, label)``).

    ``input_size`` (H, W) pixels: images of another size are resized (bilinear) to it.
    With ``flip`` each batch is run together with its mirror image. ``precision`` follows
    `eqmcli.devices.autocast_dtype` (``auto`` = bf16 on CUDA, fp32 on CPU). The backbone's
    train/eval mode is restored afterwards.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    device = torch.device(device)
    size = (int(input_size[0]), int(input_size[1]))
    dtype = autocast_dtype(precision, device)
    channels_last = device.type == "cuda"
    n = len(images)  # type: ignore[arg-type]
    workers = _default_workers(n, batch_size) if num_workers is None else num_workers
    loader = DataLoader(
        images,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    plain_parts: list[torch.Tensor] = []
    flip_parts: list[torch.Tensor] = []
    resized_from: tuple[int, int] | None = None
    was_training = backbone.training
    backbone.eval()
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not progress,
    )
    started = time.perf_counter()
    try:
        with bar, torch.no_grad():
            task = bar.add_task(description, total=n, rate="")
            done = 0
            for batch in loader:
                native = tuple(batch[0].shape[-2:])
                if resized_from is None and any(tuple(img.shape[-2:]) != size for img in batch):
                    resized_from = (int(native[0]), int(native[1]))
                x = _to_input(batch, device, size, channels_last)
                if flip:
                    x = torch.cat((x, torch.flip(x, dims=[3])))
                with autocast(device, dtype):
                    features = backbone(x)
                features = features.float()
                if flip:
                    f_plain, f_mirror = features.chunk(2)
                    flip_parts.append(F.normalize(f_plain + f_mirror, dim=1).cpu())
                else:
                    f_plain = features
                plain_parts.append(F.normalize(f_plain, dim=1).cpu())
                done += len(batch)
                rate = done / max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=len(batch), rate=f"{rate:,.0f} img/s")
    except UserError as exc:  # raised in a worker: keep the one sentence, drop the traceback
        raise UserError(_worker_message(str(exc))) from None
    finally:
        backbone.train(was_training)
    if not plain_parts:
        dim = 0
        empty = torch.zeros((0, dim), dtype=torch.float32)
        return Embeddings(empty, empty.clone() if flip else None, None)
    plain = torch.cat(plain_parts)
    return Embeddings(plain, torch.cat(flip_parts) if flip else None, resized_from)
