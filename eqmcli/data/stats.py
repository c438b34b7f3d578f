"""Class-size statistics of a training source (``eqm data stats``).

The imbalance study singles out classes with fewer than 80 images (the paper's Figs. 5-6);
the histogram bins are chosen so that 80 is a bin edge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eqmcli.data import build_train_data
from eqmcli.data.image_folder import scan_image_folder, split_holdout
from eqmcli.data.record import RecordFile, is_record_source, read_layout, record_paths
from eqmcli.errors import UserError
from eqmcli.run.recipe import ImageFolderSource, RecordSource, load_recipe

HEAD_THRESHOLD = 80  # images per class: the paper's "under 80 images" group
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
_BIN_EDGES = (0, 1, 2, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240)


@dataclass
class HistogramBin:
    """Classes whose image count n satisfies ``low <= n <= high`` (images per class)."""

    low: int
    high: int
    classes: int


@dataclass
class DataStats:
    """Counts for one training source. Class sizes count the *training* split."""

    source: str
    kind: str
    images: int  # all images (train + held-out)
    train_images: int
    test_images: int
    classes: int
    quantiles: dict[str, float]  # "min", "p5", "p25", "median", "p75", "p95", "max"
    mean: float
    classes_under_80: int
    histogram: list[HistogramBin] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``eqm data stats --json`` prints)."""
        return asdict(self)


def _quantile_name(q: float) -> str:
    return {0.0: "min", 0.5: "median", 1.0: "max"}.get(q, f"p{round(q * 100)}")


def histogram(class_sizes: np.ndarray) -> list[HistogramBin]:
    """Bins [0], [1], [2-4], [5-9], [10-19], [20-39], [40-79], [80-159], ... up to the max size;
    empty leading/trailing bins are dropped."""
    sizes = np.asarray(class_sizes, dtype=np.int64)
    if sizes.size == 0:
        return []
    top = int(sizes.max())
    edges = [e for e in _BIN_EDGES if e <= top]
    while edges[-1] * 2 <= top:
        edges.append(edges[-1] * 2)
    edges.append(top + 1)
    bins = [
        HistogramBin(lo, hi - 1, int(((sizes >= lo) & (sizes < hi)).sum()))
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]
    while bins and bins[0].classes == 0:
        bins.pop(0)
    return bins


def compute_stats(
    class_sizes: np.ndarray, *, source: str, kind: str, test_images: int = 0
) -> DataStats:
    """Summarize per-class training image counts (``class_sizes``, int (C,))."""
    sizes = np.asarray(class_sizes, dtype=np.int64)
    if sizes.size == 0:
        raise UserError(f"{source} has no classes")
    values = np.quantile(sizes, QUANTILES)
    train = int(sizes.sum())
    return DataStats(
        source=source,
        kind=kind,
        images=train + int(test_images),
        train_images=train,
        test_images=int(test_images),
        classes=int(sizes.size),
        quantiles={_quantile_name(q): float(v) for q, v in zip(QUANTILES, values, strict=True)},
        mean=float(sizes.mean()),
        classes_under_80=int((sizes < HEAD_THRESHOLD).sum()),
        histogram=histogram(sizes),
    )


def _folder_sizes(source: Any) -> tuple[np.ndarray, int]:
    """(train class sizes, held-out count) of an image-folder or record source, no decoding."""
    if source.kind == "record":
        rec_path, idx_path, prop_path = record_paths(source.root)
        rec = RecordFile(rec_path, idx_path)
        layout = read_layout(rec, prop_path)
        rec.close()
        labels, num_classes = layout.labels, layout.num_classes
    else:
        classes, _, labels = scan_image_folder(Path(source.root).expanduser())
        num_classes = len(classes)
    train_idx, test_idx = split_holdout(labels, num_classes, source.holdout_fraction, source.seed)
    return np.bincount(labels[train_idx], minlength=num_classes), len(test_idx)


def resolve_source(path: str | Path) -> Any:
    """A path -> recipe source: a ``.yaml``/``.yml`` recipe (its ``data.train``), a record
    folder (holding a ``.rec``) or a ``.rec`` file, otherwise an image folder."""
    path = Path(path).expanduser()
    if path.suffix.lower() in (".yaml", ".yml"):
        return load_recipe(path).data.train
    if not path.exists():
        raise UserError(f"data source not found: {path}")
    if is_record_source(path):
        return RecordSource(root=path)
    if path.is_dir():
        return ImageFolderSource(root=path)
    raise UserError(f"{path} is neither a recipe, a record folder nor an image folder")


def data_stats(path: str | Path) -> DataStats:
    """Statistics of the training source at ``path`` (recipe YAML, record or image folder)."""
    source = resolve_source(path)
    if source.kind == "synthetic":
        data = build_train_data(source)
        sizes = np.asarray(data.class_sizes)
        test = len(data.test_dataset) if data.test_dataset is not None else 0
    else:
        sizes, test = _folder_sizes(source)
    return compute_stats(sizes, source=str(path), kind=source.kind, test_images=test)
