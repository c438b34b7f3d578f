"""Embedding throughput on the CPU: onnxruntime (the exported ONNX graph) vs torch, same run.

Both go through `eqmcli.evaluation.features.extract_embeddings` (uint8 images -> normalized float ->
backbone) on the same random 112x112 images, with the same batch size and thread count,
in interleaved rounds so that both see the same machine load; the median of the rounds is
reported. The ONNX file is made by `eqmcli.interop.onnx.export_backbone` (the code behind
`eqm export --onnx`), so its parity check runs too.

    OMP_NUM_THREADS=2 python benchmarks/onnx_vs_torch.py --backbone iresnet50 --images 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from eqmcli.backbones import build_backbone
from eqmcli.evaluation.features import extract_embeddings
from eqmcli.interop.onnx import OnnxBackbone, export_backbone


def calibrate_batchnorm(model: torch.nn.Module, size: tuple[int, int]) -> torch.nn.Module:
    """BN statistics measured on random images, so a random network's embeddings have a
    trained network's scale (a norm of ~25 rather than ~1e5) and the export's fp32 parity
    check is meaningful; the speed does not depend on the weights."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(16, 3, *size) * 2 - 1)
    return model.eval()


def images_per_second(model: torch.nn.Module, images: torch.Tensor, batch: int) -> float:
    started = time.perf_counter()
    extract_embeddings(
        model, images, batch_size=batch, device="cpu", input_size=tuple(images.shape[-2:]),
        flip=False, progress=False, num_workers=0,
    )
    return images.shape[0] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="iresnet50")
    parser.add_argument("--size", type=int, default=112, help="image side, pixels")
    parser.add_argument("--images", type=int, default=128, help="images per timed round")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per engine")
    args = parser.parse_args()

    torch.manual_seed(0)
    size = (args.size, args.size)
    backbone = build_backbone(args.backbone, embedding_dim=512, input_size=size)
    backbone = calibrate_batchnorm(backbone, size)
    images = torch.randint(0, 256, (args.images, 3, *size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        export = export_backbone(backbone, size, Path(folder) / "model.onnx",
                                 {"eqm.backbone": args.backbone})
        engines = {"torch": backbone, "onnxruntime": OnnxBackbone(export.path)}
        for model in engines.values():  # warm-up: one batch each
            images_per_second(model, images[: args.batch], args.batch)
        rates: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, model in engines.items():
                rates[name].append(images_per_second(model, images, args.batch))
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{args.backbone} {args.size}x{args.size}, batch {args.batch}, {args.images} images x "
          f"{args.rounds} rounds, CPU, {torch.get_num_threads()} thread(s); "
          f"export max |Δ| = {export.max_abs_diff:.1e}")
    for name, value in median.items():
        print(f"  {name:12s} {value:8.1f} images/s  (rounds: "
              + ", ".join(f"{v:.1f}" for v in rates[name]) + ")")
    print(f"  onnxruntime / torch = {median['onnxruntime'] / median['torch']:.2f}")


if __name__ == "__main__":
    main()
