"""Embedding-extraction throughput: images/s of `eqmcli.evaluation.features.extract_embeddings`.

This is what `eqm eval` and `eqm analyze` spend their time on. Random uint8 images of
the backbone's input size go through the one extractor (batching, conversion on the
device, forward in eval mode, L2 normalization, optional flip-test) after one untimed
warm-up batch; the figure is images per second of wall clock (CUDA synchronized).
"""

from __future__ import annotations

import time

import torch

from eqmcli.backbones import build_backbone
from eqmcli.evaluation.features import extract_embeddings


def benchmark_extraction(
    backbone_name: str = "iresnet50",
    *,
    input_size: tuple[int, int] = (112, 112),
    batch_size: int = 64,
    batches: int = 4,
    device: str = "cpu",
    flip: bool = False,
) -> float:
    """Images per second of `extract_embeddings` on random uint8 images (one warm-up batch)."""
    dev = torch.device(device)
    model = build_backbone(backbone_name, embedding_dim=512, input_size=input_size).to(dev)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (batch_size * batches, 3, *input_size), dtype=torch.uint8, generator=generator
    )
    options = {"batch_size": batch_size, "device": dev, "input_size": input_size, "flip": flip,
               "progress": False, "num_workers": 0}
    extract_embeddings(model, images[:batch_size], **options)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    extract_embeddings(model, images, **options)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return images.shape[0] / (time.perf_counter() - started)
