"""EqM's four cases over ALL training features of analyzed runs, for docs/imbalance-study.md
(Fig. 1). `metrics.jsonl` has the same fractions, but per logged batch of 64 images.

Reads `RUN/analysis/features.npz` (written by `eqm analyze` for 2-D/3-D embeddings) and the
run's t1/t2 from `RUN/recipe.yaml`, and prints per run, as fractions in [0, 1]: hard
(cos θ_y < t1), inter (some cos θ_j > t2, j ≠ y), ideal (neither: the loss is at its
floor), and the angle between the two closest class centres in degrees.

    python benchmarks/eqm_cases.py runs/sphere/eqm [RUN ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml


def cases(run: Path) -> dict[str, float]:
    """Fractions of the run's training features in EqM's cases, and the closest centres."""
    loss = yaml.safe_load((run / "recipe.yaml").read_text())["loss"]
    stored = np.load(run / "analysis" / "features.npz")
    x = stored["embeddings"] / np.linalg.norm(stored["embeddings"], axis=1, keepdims=True)
    w = stored["centers"] / np.linalg.norm(stored["centers"], axis=1, keepdims=True)
    labels = stored["labels"]
    cos = x @ w.T
    rows = np.arange(len(x))
    own = cos[rows, labels]
    cos[rows, labels] = -np.inf
    hard, inter = own < loss["t1"], cos.max(axis=1) > loss["t2"]
    centres = w @ w.T
    np.fill_diagonal(centres, -np.inf)
    return {
        "hard": float(hard.mean()),
        "inter": float(inter.mean()),
        "ideal": float((~hard & ~inter).mean()),
        "closest_centres_deg": float(np.degrees(np.arccos(min(centres.max(), 1.0)))),
    }


def main(runs: list[str]) -> None:
    for run in runs:
        values = "  ".join(f"{key} {value:.3g}" for key, value in cases(Path(run)).items())
        print(f"{run}: {values}")


if __name__ == "__main__":
    main(sys.argv[1:])
