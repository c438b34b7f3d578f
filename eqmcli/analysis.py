"""The imbalance study: per-class intra-class scope, inter-class margin and accuracy.

Two layers:

- a pure core on arrays, `per_class_statistics(embeddings, labels, centers, t1=...)`, and
  `nearest_centers(centers)` (blocked, never a C x C matrix: it runs for C = 85,742
  identities in ~25 s and ~0.3 GB on a 2-core CPU, see `eqmcli.nearest`);
- `analyze_run(run, ...)`, which loads a trained run, embeds a reproducible sample of its
  training (or closed-set test) images, computes the table and writes
  `RUN/analysis/per_class.csv`, `RUN/analysis/summary.json` and, for 2-D/3-D embeddings,
  `RUN/analysis/features.npz` (what `eqm plot --figure sphere` draws); `--split test`
  writes the same files under `RUN/analysis/test/`, leaving the training-split ones.

All angles are in DEGREES, between L2-normalized vectors. Fractions are in [0, 1].

Embeddings are taken WITHOUT test-time flip fusion by default: the head's centres W were
trained against f(x), so the geometry to measure is that of f(x) itself; `flip=True`
measures the verification-time embedding f(x) + f(flip x) instead.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Subset

from eqmcli.atomic import atomic_write, atomic_write_text, json_safe, write_json
from eqmcli.data import TrainData, build_train_data
from eqmcli.devices import resolve_device
from eqmcli.embed import extract_embeddings
from eqmcli.errors import UserError
from eqmcli.losses import cosine_thresholds
from eqmcli.nearest import nearest_centers_cosine
from eqmcli.recipe import Recipe
from eqmcli.rundir import (
    CHECKPOINT_DIR,
    SUMMARY,
    RunPaths,
    Trained,
    checkpoint_folder,
    load_trained,
)

DEFAULT_T1 = 0.5
"""Hard-sample threshold (cosine) used when the run is not EqM and no --t1 is given."""

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
def _as_tensor(x: ArrayLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.detach().to(device="cpu", dtype=dtype)


def _unit(x: torch.Tensor) -> torch.Tensor:
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
    candidates per class (`eqmcli.nearest`). `chunk_size` is the side of the square
    blocks (default: 2048 on a CPU, 8192 on CUDA); the pass runs on `device`. With a
    single class, the margin is NaN and the nearest class -1.
    """
    cos, nearest = nearest_centers_cosine(_as_tensor(centers), chunk_size, device=device)
    return _degrees(cos), nearest


def predict_classes(
    embeddings: ArrayLike,
    centers: ArrayLike,
    chunk_size: int = 4096,
    *,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Closed-set identification: argmax over centres of the cosine, chunked over samples."""
    x = _unit(_as_tensor(embeddings))
    w = _unit(_as_tensor(centers)).to(device)
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], chunk_size):
        stop = min(start + chunk_size, x.shape[0])
        out[start:stop] = (x[start:stop].to(device) @ w.T).argmax(dim=1).cpu().numpy()
    return out


def _empty_class_error(empty: np.ndarray, where: str = "") -> UserError:
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
        raise _empty_class_error(empty)
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
    x = _as_tensor(embeddings)
    w = _as_tensor(centers)
    y = _as_tensor(labels, torch.int64).numpy().reshape(-1)
    counts = _class_counts(x, w, y)
    num_classes = w.shape[0]
    xu = _unit(x.double())
    wu = _unit(w.double())
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


# ----------------------------------------------------------------------------- runs
@dataclass
class AnalysisResult:
    """What `analyze_run` computed and where it wrote it."""

    table: PerClassTable
    summary: dict[str, Any]
    run_dir: Path
    csv_path: Path
    summary_path: Path
    features_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def dataset_labels(dataset: Any) -> np.ndarray:
    """The label of every item of a dataset, without decoding images when possible.

    Uses a `labels` or `targets` attribute (following `torch.utils.data.Subset` indices);
    otherwise reads every item (slow: it decodes each image once).
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for name in ("labels", "targets"):
        value = getattr(dataset, name, None)
        if value is not None and not callable(value):
            return np.asarray(value, dtype=np.int64).reshape(-1)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def sample_per_class(labels: np.ndarray, max_per_class: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most `max_per_class` items per class, reproducible from `seed`, sorted."""
    if max_per_class is None:
        return np.arange(labels.shape[0], dtype=np.int64)
    if max_per_class < 1:
        raise UserError(f"--max-per-class must be at least 1, got {max_per_class}")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    chosen = []
    for group in np.split(order, bounds):
        if group.size > max_per_class:
            group = rng.choice(group, size=max_per_class, replace=False)
        chosen.append(group)
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0, dtype=np.int64)


def _run_t1(trained: Any) -> float | None:
    """The run's EqM t1 (cosine): its head's, else its recipe's; None when the run is not
    EqM (`cosine_thresholds`)."""
    head = trained.head
    if head is not None:
        t1 = cosine_thresholds(head.name, head.hyperparameters).get("t1")
        if t1 is not None:
            return t1
    loss = trained.recipe.loss
    return cosine_thresholds(loss.name, {"t1": loss.t1}).get("t1")


def resolve_t1(trained: Any, t1: float | None) -> tuple[float, str]:
    """An explicit `--t1` wins; else the run's EqM t1; else `DEFAULT_T1`. Returns (t1, source)."""
    if t1 is not None:
        if not -1.0 <= t1 <= 1.0:
            raise UserError(f"--t1 is a cosine and must lie in [-1, 1], got {t1}")
        return float(t1), "--t1"
    run_t1 = _run_t1(trained)
    if run_t1 is not None:
        return run_t1, "the run's eqm loss"
    return DEFAULT_T1, f"default {DEFAULT_T1} (the run is not eqm and no --t1 was given)"


def _train_centers(trained: Trained, train_data: TrainData) -> torch.Tensor:
    """The head's class centres (C, d) float32 on the CPU, checked against the data."""
    weight = getattr(trained.head, "weight", None) if trained.head is not None else None
    if weight is None:
        raise UserError(f"{trained.checkpoint_path} has no classification head to analyze")
    centers = weight.detach().float().cpu()
    if centers.shape[0] != train_data.num_classes:
        raise UserError(
            f"the head of {trained.checkpoint_path} has {centers.shape[0]} classes but the "
            f"run's training data has {train_data.num_classes}"
        )
    class_sizes = np.asarray(train_data.class_sizes, dtype=np.int64)
    if (class_sizes == 0).any():
        raise _empty_class_error(np.flatnonzero(class_sizes == 0), " in the training data")
    return centers


def _split_dataset(train_data: TrainData, split: str) -> Any:
    """The dataset of `split` ('train' or 'test'); a `UserError` when it is missing."""
    if split == "train":
        return train_data.dataset
    if split != "test":
        raise UserError(f"--split must be 'train' or 'test', got {split!r}")
    if train_data.test_dataset is None or len(train_data.test_dataset) == 0:
        raise UserError(
            "the run's data has no test split; set data.train.test_images_per_class "
            "(synthetic) or data.train.holdout_fraction (image-folder, record) and retrain, "
            "or use --split train"
        )
    return train_data.test_dataset


def analysis_folder(trained: Trained) -> Path:
    """Where `eqm analyze` writes: the run's ``analysis/`` for ``checkpoints/last.pt`` (or a
    model file outside ``checkpoints/``), ``analysis/<stem>/`` for another checkpoint of the
    run (``best.pt`` -> ``analysis/best/``), so that no checkpoint's tables replace another's;
    the test split goes one level deeper (``test/``)."""
    checkpoint = Path(trained.checkpoint_path)
    analysis_dir = RunPaths(Path(trained.run_dir)).analysis_dir
    if checkpoint.parent.name != CHECKPOINT_DIR:
        return analysis_dir
    if checkpoint.stem == "test":
        raise UserError(f"{checkpoint}: a checkpoint named test.* would share "
                        f"{analysis_dir / 'test'} with the test split; rename it")
    return checkpoint_folder(analysis_dir, checkpoint.name)


def _write_outputs(
    out_dir: Path, table: PerClassTable, summary: dict[str, Any], features: dict | None,
    class_names: list[str] | None = None,
) -> tuple[Path, Path, Path | None]:
    """per_class.csv, summary.json and (when given) features.npz, each renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, summary_path = out_dir / "per_class.csv", out_dir / SUMMARY
    table.to_csv(csv_path, class_names)
    write_json(summary_path, summary)
    if features is None:
        return csv_path, summary_path, None
    features_path = out_dir / "features.npz"
    atomic_write(features_path, lambda stream: np.savez_compressed(stream, **features))
    return csv_path, summary_path, features_path


def analyze_trained(
    trained: Trained,
    train_data: TrainData,
    *,
    head_classes: int = 80,
    split: Literal["train", "test"] = "train",
    max_per_class: int | None = None,
    t1: float | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    flip: bool = False,
    batch_size: int = 256,
    chunk_size: int = 4096,
    progress: bool = True,
) -> AnalysisResult:
    """Analyze an already loaded run on its `TrainData`.

    Embeds the chosen split, computes `per_class_statistics` with `n_images` = each class's
    training size, and writes `analysis/per_class.csv`, `analysis/summary.json` and (for
    embedding dimension <= 3) `analysis/features.npz` under `trained.run_dir` (another
    checkpoint than last.pt: under `analysis/<its stem>/`; the test split: `test/` below).
    """
    if head_classes < 1:
        raise UserError(f"--head-classes must be at least 1, got {head_classes}")
    centers = _train_centers(trained, train_data)
    dataset = _split_dataset(train_data, split)
    t1_value, t1_source = resolve_t1(trained, t1)
    labels = dataset_labels(dataset)
    counts = np.bincount(labels, minlength=centers.shape[0])
    if (counts == 0).any():
        raise _empty_class_error(np.flatnonzero(counts == 0), f" in the {split} split")
    indices = sample_per_class(labels, max_per_class, seed)

    torch_device = resolve_device(device) if isinstance(device, str) else device
    emb = extract_embeddings(
        trained.backbone, Subset(dataset, indices.tolist()), batch_size=batch_size,
        device=torch_device, input_size=trained.input_size, flip=flip, precision="auto",
        progress=progress,
    )
    features = emb.flip if flip and emb.flip is not None else emb.plain
    class_sizes = np.asarray(train_data.class_sizes, dtype=np.int64)
    table = per_class_statistics(
        features, labels[indices], centers, t1=t1_value, chunk_size=chunk_size,
        class_sizes=class_sizes, device=torch_device,
    )
    summary: dict[str, Any] = {
        "run": str(trained.run_dir),
        "checkpoint": str(trained.checkpoint_path),
        "loss": getattr(getattr(trained.recipe, "loss", None), "name", None),
        "split": split,
        "num_classes": int(centers.shape[0]),
        "embedding_dim": int(centers.shape[1]),
        "samples": int(indices.size),
        "max_per_class": max_per_class,
        "seed": seed,
        "flip": flip,
        "t1": t1_value,
        "t1_source": t1_source,
        "angles": "degrees",
        **summarize(table, head_classes=head_classes),
    }
    out_dir = analysis_folder(trained)
    features_npz = None
    if centers.shape[1] <= 3:  # what `eqm plot --figure sphere` draws
        features_npz = {"embeddings": _unit(_as_tensor(features)).numpy(),
                        "labels": labels[indices], "centers": _unit(centers).numpy(),
                        "class_sizes": class_sizes}
    csv_path, summary_path, features_path = _write_outputs(
        out_dir if split == "train" else out_dir / split, table, summary, features_npz,
        train_data.class_names,
    )
    return AnalysisResult(
        table=table,
        summary=json_safe(summary),
        run_dir=Path(trained.run_dir),
        csv_path=csv_path,
        summary_path=summary_path,
        features_path=features_path,
    )


def train_source(recipe: Recipe, recipe_origin: Path, data_root: Path | None = None) -> Any:
    """The run's `data.train` source, with its folder replaced by `data_root` when given.

    A file-backed source (image-folder, record) whose folder does not exist is a
    `UserError` that names the folder, where it was recorded and `--data-root`;
    `data_root` for synthetic data (no files) is a `UserError` too.
    """
    source = recipe.data.train
    root = source.data_folder
    if data_root is not None:
        if root is None:
            raise UserError(
                f"--data-root {data_root} was given but the run's data.train is "
                f"{source.kind} (rendered, no files)"
            )
        if not Path(data_root).is_dir():
            raise UserError(f"--data-root {data_root} is not a folder")
        return source.model_copy(update={"root": Path(data_root)})
    if root is not None and not Path(root).is_dir():
        where = "" if Path(root).is_absolute() else f" (relative to {Path.cwd()})"
        raise UserError(
            f"the run's training data folder {root}{where}, data.train.root in "
            f"{recipe_origin}, does not exist; pass --data-root DIR to point at the data"
        )
    return source


def analyze_run(
    run: str | Path,
    *,
    head_classes: int = 80,
    split: Literal["train", "test"] = "train",
    max_per_class: int | None = None,
    t1: float | None = None,
    device: str = "auto",
    seed: int = 0,
    flip: bool = False,
    batch_size: int = 256,
    data_root: Path | None = None,
    progress: bool = True,
) -> AnalysisResult:
    """Load a run (directory or checkpoint), rebuild its training data and analyze it.

    `data_root` replaces the run's `data.train.root` (its image folder or record folder),
    e.g. when the recorded path was relative or the data moved. See `analyze_trained`
    for what is computed and written. A missing run directory or data folder, a
    checkpoint without a head, an empty class or a missing test split is a `UserError`.
    """
    path = Path(run)
    if not path.exists():
        raise UserError(f"run directory or checkpoint not found: {path}")
    torch_device = resolve_device(device)
    trained = load_trained(path, str(torch_device))
    source = train_source(trained.recipe, trained.checkpoint_path, data_root)
    return analyze_trained(
        trained,
        build_train_data(source),
        head_classes=head_classes,
        split=split,
        max_per_class=max_per_class,
        t1=t1,
        device=torch_device,
        seed=seed,
        flip=flip,
        batch_size=batch_size,
        progress=progress,
    )


__all__: Sequence[str] = (
    "AnalysisResult",
    "PerClassTable",
    "analyze_run",
    "analyze_trained",
    "group_statistics",
    "nearest_centers",
    "per_class_statistics",
    "predict_classes",
    "sample_per_class",
    "size_bin_edges",
    "summarize",
)
