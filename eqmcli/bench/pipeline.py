"""Input-pipeline throughput: images/s of iterating a loader over a ``.rec`` and an image
folder of 112x112 JPEGs, for several worker counts.

The data set is generated in a temporary folder (smooth random "faces": low-resolution
noise upsampled plus fine grain, JPEG quality 90, about the byte size of aligned
CASIA-WebFace crops), written once as an image folder and once as ``train.rec``. Each
configuration runs one warm-up epoch (worker start-up, page cache) and then times full
epochs; the reported figure is images decoded and collated per second of wall time.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eqmcli.data.image_folder import ImageFolderDataset, scan_image_folder
from eqmcli.data.loader import available_cpus, default_num_workers, make_loader
from eqmcli.data.record import RecordDataset, RecordFile, folder_to_record, read_layout


@dataclass
class PipelineResult:
    """Throughput of one (source, worker count) configuration."""

    source: str  # "record" or "image-folder"
    num_workers: int
    images: int  # images timed
    seconds: float  # wall time of the timed epochs
    images_per_s: float
    is_default: bool  # num_workers == default_num_workers()


def make_jpeg_folder(
    root: str | Path,
    num_images: int = 2000,
    num_classes: int = 50,
    size: int = 112,
    seed: int = 0,
    quality: int = 90,
) -> Path:
    """Write ``root/<class>/<k>.jpg``: ``num_images`` JPEGs of ``size`` px, classes balanced."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        label = i % num_classes
        low = rng.integers(40, 215, (7, 7, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (size, size, 3))
        folder = root / f"{label:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"{i:06d}.jpg", quality=quality
        )
    return root


def time_loader(dataset: Any, *, num_workers: int, batch_size: int, epochs: int = 1) -> float:
    """Seconds to iterate ``epochs`` full epochs after one warm-up epoch (same workers)."""
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    for _ in loader:  # warm-up: start the (persistent) workers, fill the page cache
        pass
    start = time.perf_counter()
    for _ in range(epochs):
        for _images, _labels in loader:
            pass
    seconds = time.perf_counter() - start
    del loader  # stops the persistent workers
    return seconds


def pipeline_benchmark(
    workers: Sequence[int] | None = None,
    *,
    num_images: int = 2000,
    batch_size: int = 128,
    image_size: int = 112,
    epochs: int = 1,
    root: str | Path | None = None,
) -> list[PipelineResult]:
    """Measure loader throughput (images/s) over a generated ``.rec`` and image folder.

    ``workers`` defaults to 0..`default_num_workers()` (at least 0, 1, 2). ``root`` keeps
    the generated data there instead of a temporary folder.
    """
    default = default_num_workers()
    counts = sorted(set(workers)) if workers is not None else list(range(max(default, 2) + 1))
    with tempfile.TemporaryDirectory(prefix="eqm-bench-") as tmp:
        base = Path(root) if root is not None else Path(tmp)
        folder, rec_dir = base / "folder", base / "record"
        if not folder.is_dir():
            make_jpeg_folder(folder, num_images, size=image_size)
        if not (rec_dir / "train.rec").is_file():
            folder_to_record(folder, rec_dir)
        _, files, labels = scan_image_folder(folder)
        rec = RecordFile(rec_dir / "train.rec")
        layout = read_layout(rec)
        rec.close()
        sources = {
            "record": RecordDataset(rec, layout.keys, layout.labels),
            "image-folder": ImageFolderDataset(folder, files, labels),
        }
        results = []
        for name, dataset in sources.items():
            for n in counts:
                seconds = time_loader(
                    dataset, num_workers=n, batch_size=batch_size, epochs=epochs
                )
                images = len(dataset) * epochs
                results.append(
                    PipelineResult(name, n, images, seconds, images / seconds, n == default)
                )
    return results


def results_to_dict(results: Sequence[PipelineResult]) -> dict[str, Any]:
    """JSON-ready summary, with the machine's CPU count and the default worker count."""
    return {
        "benchmark": "pipeline",
        "cpus": available_cpus(),
        "default_num_workers": default_num_workers(),
        "results": [asdict(r) for r in results],
    }
