"""A trained run in, ``RUN/analysis/`` out: what `eqm analyze` runs.

`analyze_run(run, ...)` loads a trained run, embeds a reproducible sample of its training
(or closed-set test) images, computes the table (`eqmcli.analysis.statistics`) and writes
`RUN/analysis/per_class.csv`, `RUN/analysis/summary.json` and, for 2-D/3-D embeddings,
`RUN/analysis/features.npz` (what `eqm plot --figure sphere` draws); `--split test`
writes the same files under `RUN/analysis/test/`, leaving the training-split ones.

Embeddings are taken WITHOUT test-time flip fusion by default: the head's centres W were
trained against f(x), so the geometry to measure is that of f(x) itself; `flip=True`
measures the verification-time embedding f(x) + f(flip x) instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Subset

from eqmcli.analysis.statistics import (
    PerClassTable,
    as_tensor,
    empty_class_error,
    per_class_statistics,
    summarize,
    unit_rows,
)
from eqmcli.atomic import atomic_write, json_safe, write_json
from eqmcli.data import TrainData, build_train_data
from eqmcli.devices import resolve_device
from eqmcli.errors import UserError
from eqmcli.evaluation.features import extract_embeddings
from eqmcli.losses import cosine_thresholds
from eqmcli.run.recipe import Recipe
from eqmcli.run.rundir import (
    CHECKPOINT_DIR,
    SUMMARY,
    RunPaths,
    Trained,
    checkpoint_folder,
    load_trained,
)

DEFAULT_T1 = 0.5
"""Hard-sample threshold (cosine) used when the run is not EqM and no --t1 is given."""


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
        raise empty_class_error(np.flatnonzero(class_sizes == 0), " in the training data")
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
        raise empty_class_error(np.flatnonzero(counts == 0), f" in the {split} split")
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
        features_npz = {"embeddings": unit_rows(as_tensor(features)).numpy(),
                        "labels": labels[indices], "centers": unit_rows(centers).numpy(),
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
