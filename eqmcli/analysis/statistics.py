"""The imbalance study's pure core: per-class intra-class scope, inter-class margin and
accuracy on arrays.

`per_class_statistics(embeddings, labels, centers, t1=...)` builds the `PerClassTable`;
`nearest_centers(centers)` finds each class's nearest other centre (blocked, never a C x C
matrix: it runs for C = 85,742 identities in ~25 s and ~0.3 GB on a 2-core CPU, see
`eqmcli.analysis.nearest`); `size_bin_edges`, `group_statistics` and `summarize` make the
head/tail summary that `eqm plot` draws.

All angles are in DEGREES, between L2-normalized vectors. Fractions are in [0, 1].
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqmcli.analysis.nearest import nearest_centers_cosine
from eqmcli.atomic import atomic_write_text
from eqmcli.errors import UserError

SCOPE_PERCENTILE = 95.0

ArrayLike = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------- table
@dataclass
class PerClassTable:
    """One row per class (index = class id). Angles in degrees, fractions in [0, 1].

    `n_images` is the class's training size (what the x-axis of Fig. 5 shows);
    `n_samples` is how many of its images were embedded for this analysis.
    `margin` is NaN and `nearest_class` -1 when there is no other class.
    """

    class_id: np.ndarray
    n_images: np.ndarray
    n_samples: np.ndarray
    scope_max: np.ndarray
    scope_p95: np.ndarray
    scope_mean: np.ndarray
    margin: np.ndarray
    nearest_class: np.ndarray
    hard_fraction: np.ndarray
    accuracy: np.ndarray
    hard_count: np.ndarray
    hard_correct: np.ndarray
    easy_count: np.ndarray
    easy_correct: np.ndarray

    INT_COLUMNS = (
        "class_id",
        "n_images",
        "n_samples",
        "nearest_class",
        "hard_count",
        "hard_correct",
        "easy_count",
        "easy_correct",
    )

    @classmethod
    def columns(cls) -> list[str]:
        """The CSV column order."""
        return [f.name for f in fields(cls)]

    def __len__(self) -> int:
        return int(self.class_id.shape[0])

    def to_csv(self, path: Path, class_names: list[str] | None = None) -> None:
        """Write one header line and one row per class (floats with 6 decimals).

        The second column, `class_name`, is each class's name from `class_names` (an image
        folder's identity folders), empty where the data has none. The file is written to a
        temporary sibling and renamed into place.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        names = self.columns()
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow([names[0], "class_name", *names[1:]])
        cols = [getattr(self, name) for name in names]
        for i in range(len(self)):
            row = [str(int(self.class_id[i])),
                   class_names[int(self.class_id[i])] if class_names is not None else ""]
            for name, col in zip(names[1:], cols[1:], strict=True):
                value = col[i]
                if name in self.INT_COLUMNS:
                    row.append(str(int(value)))
                else:
                    row.append("" if math.isnan(value) else f"{float(value):.6f}")
            writer.writerow(row)
        atomic_write_text(path, text.getvalue())

    @classmethod
    def from_csv(cls, path: Path) -> PerClassTable:
        """Read a table written by `to_csv` (a missing column is a `UserError`)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"per-class table not found: {path}; run 'eqm analyze' first")
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        names = cls.columns()
        if rows:
            missing = [n for n in names if n not in rows[0]]
            if missing:
                raise UserError(f"{path} lacks the column(s) {', '.join(missing)}")
        data: dict[str, np.ndarray] = {}
        for name in names:
            if name in cls.INT_COLUMNS:
                data[name] = np.array([int(r[name]) for r in rows], dtype=np.int64)
            else:
                data[name] = np.array(
                    [float(r[name]) if r[name] != "" else math.nan for r in rows], dtype=np.float64
                )
        return cls(**data)


# ------------------------------------------------------------------------------ core
def as_tensor(x: ArrayLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.detach().to(device="cpu", dtype=dtype)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1, eps=1e-12)


def _degrees(cos: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def nearest_centers(
    centers: ArrayLike, chunk_size: int | None = None, *, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """For each centre W_c, the nearest other centre and the angle to it.

    Returns `(margin_deg (C,) float64, nearest (C,) int64)`, the answer of an exact
    float64 search for every class (lowest index on an exact tie), found by a blocked
    float32 pass over each pair of classes once plus a float64 re-check of the few
    candidates per class (`eqmcli.analysis.nearest`). `chunk_size` is the side of the square
    blocks (default: 2048 on a CPU, 8192 on CUDA); the pass runs on `device`. With a
    single class, the margin is NaN and the nearest class -1.
    """
    cos, nearest = nearest_centers_cosine(as_tensor(centers), chunk_size, device=device)
    return _degrees(cos), nearest


def predict_classes(
    embeddings: ArrayLike,
    centers: ArrayLike,
    chunk_size: int = 4096,
    *,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Closed-set identification: argmax over centres of the cosine, chunked over samples."""
    x = unit_rows(as_tensor(embeddings))
    w = unit_rows(as_tensor(centers)).to(device)
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], chunk_size):
        stop = min(start + chunk_size, x.shape[0])
        out[start:stop] = (x[start:stop].to(device) @ w.T).argmax(dim=1).cpu().numpy()
    return out


def empty_class_error(empty: np.ndarray, where: str = "") -> UserError:
    """One sentence naming the (first few) classes without images."""
    shown = ", ".join(str(int(c)) for c in empty[:5])
    more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
    subject = f"class {shown} has" if len(empty) == 1 else f"classes {shown}{more} have"
    return UserError(f"empty class: {subject} no images{where}, so there is nothing to analyze")


def _class_counts(x: torch.Tensor, w: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """Samples per class, after checking shapes and labels (each a one-sentence `UserError`)."""
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise UserError(
            f"embeddings {tuple(x.shape)} and centres {tuple(w.shape)} do not have the same "
            "dimension"
        )
    if x.shape[0] != y.shape[0]:
        raise UserError(f"{x.shape[0]} embeddings but {y.shape[0]} labels")
    num_classes = w.shape[0]
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise UserError(f"label {bad} is outside the head's {num_classes} classes")
    counts = np.bincount(y, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise empty_class_error(empty)
    return counts


def per_class_statistics(
    embeddings: ArrayLike,
    labels: ArrayLike,
    centers: ArrayLike,
    *,
    t1: float,
    chunk_size: int = 4096,
    class_sizes: ArrayLike | None = None,
    device: torch.device | str = "cpu",
) -> PerClassTable:
    """Per-class scope, margin, hard fraction and accuracy (angles in degrees).

    embeddings (N, d) and centers (C, d) need not be normalized; labels (N,) are class ids
    in [0, C). A sample is *hard* when the cosine to its own centre is below `t1` (EqM's
    lower limit of intra-class similarity). `n_images` is `class_sizes` when given (the
    training size of each class), else the number of samples. Every class must have at
    least one sample, else a `UserError`. The closed-set search is chunked over samples
    (memory O(chunk_size x C + N d)); both it and the margin search (`nearest_centers`)
    run on `device`.
    """
    x = as_tensor(embeddings)
    w = as_tensor(centers)
    y = as_tensor(labels, torch.int64).numpy().reshape(-1)
    counts = _class_counts(x, w, y)
    num_classes = w.shape[0]
    xu = unit_rows(x.double())
    wu = unit_rows(w.double())
    own_cos = (xu * wu[torch.from_numpy(y)]).sum(dim=1).numpy()
    angles = _degrees(own_cos)
    hard = own_cos < t1
    correct = predict_classes(x, w, chunk_size, device=device) == y

    # group angles by class, sorted within each class (vectorized percentiles)
    order = np.lexsort((angles, y))
    sorted_angles = angles[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ends = starts + counts - 1
    scope_max = sorted_angles[ends]
    pos = starts + (counts - 1) * (SCOPE_PERCENTILE / 100.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, ends)
    scope_p95 = sorted_angles[lo] + (pos - lo) * (sorted_angles[hi] - sorted_angles[lo])
    scope_mean = np.bincount(y, weights=angles, minlength=num_classes) / counts

    hard_count = np.bincount(y, weights=hard, minlength=num_classes).astype(np.int64)
    hard_correct = np.bincount(y, weights=hard & correct, minlength=num_classes).astype(np.int64)
    n_correct = np.bincount(y, weights=correct, minlength=num_classes).astype(np.int64)
    margin, nearest = nearest_centers(w, device=device)
    sizes = counts if class_sizes is None else np.asarray(class_sizes, dtype=np.int64)
    if sizes.shape != (num_classes,):
        raise UserError(f"class_sizes has {sizes.shape[0]} entries for {num_classes} classes")
    return PerClassTable(
        class_id=np.arange(num_classes, dtype=np.int64),
        n_images=sizes.astype(np.int64),
        n_samples=counts.astype(np.int64),
        scope_max=scope_max,
        scope_p95=scope_p95,
        scope_mean=scope_mean,
        margin=margin,
        nearest_class=nearest,
        hard_fraction=hard_count / counts,
        accuracy=n_correct / counts,
        hard_count=hard_count,
        hard_correct=hard_correct,
        easy_count=counts - hard_count,
        easy_correct=n_correct - hard_correct,
    )


# --------------------------------------------------------------------------- summary
def size_bin_edges(class_sizes: ArrayLike, head_classes: int = 80) -> list[int]:
    """Class-size bin edges (images): powers of two times `head_classes`, covering the data.

    The head threshold is always an edge, so bins never straddle the few/many split.
    Bin i holds classes with `edges[i] <= n_images < edges[i + 1]`.
    """
    sizes = np.asarray(class_sizes)
    low, high = (int(sizes.min()), int(sizes.max())) if sizes.size else (1, 1)
    edges = [head_classes]
    while edges[0] > max(low, 1):
        edges.insert(0, max(1, round(edges[0] / 2)))
        if edges[0] == edges[1]:
            edges.pop(0)
            break
    while edges[-1] <= high:
        edges.append(edges[-1] * 2)
    return edges


def _describe_values(values: np.ndarray) -> dict[str, float | None]:
    """mean, std (population), coefficient of variation, min, max; None where undefined."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"mean": None, "std": None, "cv": None, "min": None, "max": None}
    mean = float(values.mean())
    std = float(values.std())
    return {
        "mean": mean,
        "std": std,
        "cv": std / mean if mean > 0 else None,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


def group_statistics(table: PerClassTable, mask: np.ndarray) -> dict[str, Any]:
    """Statistics over the classes selected by `mask` (angles in degrees, fractions [0, 1]).

    `accuracy` is the mean of per-class accuracies (each class weighs the same);
    `accuracy_samples` pools the samples; `accuracy_hard`/`accuracy_easy` pool the hard
    (cos to own centre < t1) and easy samples; `hard_fraction` pools the samples.
    """
    n_samples = int(table.n_samples[mask].sum())
    hard = int(table.hard_count[mask].sum())
    easy = int(table.easy_count[mask].sum())
    hard_ok = int(table.hard_correct[mask].sum())
    easy_ok = int(table.easy_correct[mask].sum())
    acc = table.accuracy[mask]
    return {
        "classes": int(mask.sum()),
        "images": int(table.n_images[mask].sum()),
        "samples": n_samples,
        "margin_deg": _describe_values(table.margin[mask]),
        "scope_max_deg": _describe_values(table.scope_max[mask]),
        "scope_p95_deg": _describe_values(table.scope_p95[mask]),
        "scope_mean_deg": _describe_values(table.scope_mean[mask]),
        "accuracy": float(acc.mean()) if acc.size else None,
        "accuracy_samples": _ratio(hard_ok + easy_ok, n_samples),
        "accuracy_hard": _ratio(hard_ok, hard),
        "accuracy_easy": _ratio(easy_ok, easy),
        "hard_fraction": _ratio(hard, n_samples),
        "hard_samples": hard,
        "easy_samples": easy,
    }


def group_masks(table: PerClassTable, head_classes: int) -> dict[str, np.ndarray]:
    """`all`, `few` (fewer than `head_classes` training images) and `many` (the rest)."""
    few = table.n_images < head_classes
    return {"all": np.ones(len(table), dtype=bool), "few": few, "many": ~few}


def group_label(name: str, head_classes: int) -> str:
    """Human label of a group, e.g. `few (<80 images)`."""
    return {
        "all": "all classes",
        "few": f"few (<{head_classes} images)",
        "many": f"many (>={head_classes} images)",
    }[name]


def summarize(table: PerClassTable, *, head_classes: int = 80) -> dict[str, Any]:
    """Per group (all / few / many) and per class-size bin statistics (see `group_statistics`)."""
    groups = {}
    for name, mask in group_masks(table, head_classes).items():
        groups[name] = {"label": group_label(name, head_classes), **group_statistics(table, mask)}
    edges = size_bin_edges(table.n_images, head_classes)
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (table.n_images >= lo) & (table.n_images < hi)
        if mask.any():
            label = f"{lo}-{hi - 1}" if hi - 1 > lo else f"{lo}"
            bins.append({"label": label, "low": lo, "high": hi, **group_statistics(table, mask)})
    return {"head_classes": head_classes, "groups": groups, "bins": bins}


