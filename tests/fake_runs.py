"""Run folders written by hand in the published layout (recipe.yaml, metrics.jsonl,
eval/, analysis/), for the tests of what reads results: `eqm compare`, sweep tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eqmcli.evaluation.pair_outcomes import write_pair_scores


def fake_run(folder: Path, accuracy: float, *, closed_few: float | None = None,
              correct: np.ndarray | None = None, issame: np.ndarray | None = None,
              fingerprint: str | None = "0" * 20) -> Path:
    """A run directory with recipe.yaml, metrics.jsonl, eval/synthetic.json (+ .pairs.npz),
    verified on the pairs `fingerprint` names."""
    (folder / "eval").mkdir(parents=True)
    (folder / "recipe.yaml").write_text("name: fake\n")
    (folder / "metrics.jsonl").write_text(
        json.dumps({"kind": "eval", "epoch": 1, "benchmark": "synthetic"}) + "\n")
    result = {"benchmark": "synthetic", "accuracy": accuracy, "accuracy_std": 0.01,
              "tar_at_far": {"1e-03": None}, "auc": 0.99, "eer": 0.05,
              "fold_thresholds": [0.0, 0.0], "fold_accuracies": [accuracy, accuracy],
              "pairs_fingerprint": fingerprint}
    if correct is not None:
        predicted = np.where(correct, issame, ~issame)
        scores = np.where(predicted, 1.0, -1.0)
        write_pair_scores(folder / "eval", "synthetic", scores, issame, folds=2,
                          fingerprint=fingerprint)
        halves = np.array_split(correct, 2)
        result["fold_accuracies"] = [float(h.mean()) for h in halves]
        result["accuracy"] = float(np.mean(result["fold_accuracies"]))
    (folder / "eval" / "synthetic.json").write_text(json.dumps(result))
    if closed_few is not None:
        (folder / "analysis" / "test").mkdir(parents=True)
        groups = {g: {"accuracy": closed_few} for g in ("all", "few", "many")}
        (folder / "analysis" / "test" / "summary.json").write_text(json.dumps({"groups": groups}))
    return folder
