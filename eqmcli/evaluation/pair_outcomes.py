"""Per-pair verification outcomes, saved beside `<set>.json` as `<set>.pairs.npz` in a
results folder (`RUN/eval/` for a run's last checkpoint;
`eqmcli.evaluation.evaluate.results_folder`).

The file holds each pair's cosine `score` (float32, the values the protocol thresholded),
its ground truth `issame` (bool), its `fold` (int16, 0-based) and, when known, the set's
`fingerprint` (a string: `eqmcli.evaluation.pair_sets.pairs_fingerprint`, also in the JSON).
With the fold thresholds of `<set>.json` they give each pair's correctness under the
10-fold protocol, `(score > threshold[fold]) == issame` (the rule of
`eqmcli.evaluation.verification.accuracy_at`), which is what a paired test between two models needs
(`eqmcli.experiments.compare.mcnemar`).
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np

from eqmcli.atomic import atomic_write, atomic_write_text
from eqmcli.errors import UserError
from eqmcli.evaluation.pair_sets import contiguous_folds
from eqmcli.evaluation.verification import SetEvaluation
from eqmcli.run.rundir import read_json_object

SUFFIX = ".pairs.npz"
FAILURES_SUFFIX = ".failures.csv"


def pairs_path(results_dir: Path, benchmark: str) -> Path:
    """`<results_dir>/<benchmark>.pairs.npz` (e.g. `RUN/eval/synthetic.pairs.npz`)."""
    return Path(results_dir) / f"{benchmark}{SUFFIX}"


def write_pair_scores(
    results_dir: Path, benchmark: str, scores: np.ndarray, issame: np.ndarray, folds: int,
    *, fingerprint: str | None = None, fold_of: np.ndarray | None = None,
) -> Path:
    """Save each pair's score, ground truth and fold index (``fold_of``, else contiguous
    blocks), and the pairs' fingerprint when known (renamed into place)."""
    fold = (contiguous_folds(len(scores), folds) if fold_of is None else fold_of).astype(np.int16)
    buffer = io.BytesIO()
    extra = {} if fingerprint is None else {"fingerprint": np.asarray(fingerprint)}
    np.savez_compressed(buffer, score=np.asarray(scores, dtype=np.float32),
                        issame=np.asarray(issame, dtype=bool), fold=fold, **extra)
    path = pairs_path(results_dir, benchmark)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda stream: stream.write(buffer.getvalue()))


def failures_path(results_dir: Path, benchmark: str) -> Path:
    """`<results_dir>/<benchmark>.failures.csv`."""
    return Path(results_dir) / f"{benchmark}{FAILURES_SUFFIX}"


def write_failures(results_dir: Path, evaluation: SetEvaluation) -> Path | None:
    """List the pairs the protocol got wrong in `<benchmark>.failures.csv`: one row per pair
    (`pair`: its index among the pairs scored, `fold`, `label` same/different, `score` and
    the fold's `threshold` in cosine units, `image_a`, `image_b`: file paths, or
    ``<set>#<index>`` for images inside a .bin or the synthetic set, `reason`: "wrong" or
    "missing image"). None (nothing written) when the result has no fold thresholds."""
    result = evaluation.result
    if evaluation.scores is None or evaluation.issame is None or not result.fold_thresholds:
        return None
    scores, issame = evaluation.scores.astype(np.float64), evaluation.issame
    fold = (contiguous_folds(len(scores), result.folds) if evaluation.fold_of is None
            else evaluation.fold_of)
    thresholds = np.asarray(result.fold_thresholds, dtype=np.float64)[fold]
    wrong = (scores > thresholds) != issame
    unscored = (np.zeros(len(scores), dtype=bool) if evaluation.unscored is None
                else evaluation.unscored)
    names = evaluation.pair_names
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["pair", "fold", "label", "score", "threshold", "image_a", "image_b",
                     "reason"])
    for k in np.flatnonzero(wrong | unscored).tolist():
        writer.writerow([
            k, int(fold[k]), "same" if issame[k] else "different",
            "" if unscored[k] else f"{scores[k]:.6f}", f"{thresholds[k]:.6f}",
            *(names[k] if names is not None else ("", "")),
            "missing image" if unscored[k] else "wrong",
        ])
    path = failures_path(results_dir, evaluation.benchmark)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text.getvalue())


def _load_pairs(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            found = {key: data[key] for key in ("score", "issame", "fold")}
            if "fingerprint" in data:
                found["fingerprint"] = data["fingerprint"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a per-pair scores file ({type(exc).__name__})") from None
    if "fingerprint" in found and found["fingerprint"].dtype.kind != "U":
        raise UserError(f"{path}: its fingerprint is not a string")
    if not found["score"].shape == found["issame"].shape == found["fold"].shape:
        raise UserError(f"{path}: score, issame and fold have different lengths")
    return found


def pair_correctness(results_dir: Path, benchmark: str) -> tuple[np.ndarray, np.ndarray]:
    """(correct (P,) bool, issame (P,) bool) of every pair of `benchmark` in a results folder.

    Checked against the folder's `<benchmark>.json`: the per-fold accuracies must come
    out as recorded there, else a `UserError` (the two files are from different evaluations).
    """
    result_path = Path(results_dir) / f"{benchmark}.json"
    npz = pairs_path(results_dir, benchmark)
    if not npz.is_file():
        raise UserError(
            f"{npz} is missing: per-pair scores are written by 'eqm eval' and by training's "
            "final verification since this version; re-run 'eqm eval' on that model"
        )
    result = read_json_object(result_path) or {}
    try:
        thresholds = np.asarray(result["fold_thresholds"], dtype=np.float64)
        recorded = np.asarray(result["fold_accuracies"], dtype=np.float64)
        fingerprint = result.get("pairs_fingerprint")
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{result_path} is missing or holds no fold thresholds") from None
    pairs = _load_pairs(npz)
    if pairs["fold"].size == 0 or int(pairs["fold"].max()) >= thresholds.size:
        raise UserError(f"{npz} does not match the {thresholds.size} folds of {result_path}")
    predicted = pairs["score"].astype(np.float64) > thresholds[pairs["fold"]]
    correct = predicted == pairs["issame"]
    folds = np.bincount(pairs["fold"], weights=correct, minlength=thresholds.size)
    sizes = np.bincount(pairs["fold"], minlength=thresholds.size)
    stored = str(pairs["fingerprint"]) if "fingerprint" in pairs else None
    if stored != fingerprint or recorded.shape != folds.shape or not np.allclose(
            folds / sizes, recorded, atol=1e-9):
        raise UserError(f"{npz} and {result_path} come from different evaluations")
    return correct, pairs["issame"]
