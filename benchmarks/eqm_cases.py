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
import torch
import yaml

from eqmcli.losses.margins import eqm_stats


def cases(run: Path) -> dict[str, float]:
    """Fractions of the run's training features in EqM's cases, and the closest centres."""
    loss = yaml.safe_load((run / "recipe.yaml").read_text())["loss"]
    if loss.get("t1") is None or loss.get("t2") is None:
        print(f"Error: {run} is not an EqM run (its loss is {loss.get('name')!r})",
              file=sys.stderr)
        sys.exit(2)
    stored = np.load(run / "analysis" / "features.npz")
    x = stored["embeddings"] / np.linalg.norm(stored["embeddings"], axis=1, keepdims=True)
    w = stored["centers"] / np.linalg.norm(stored["centers"], axis=1, keepdims=True)
    labels = stored["labels"]
    cos = x @ w.T
    rows = np.arange(len(x))
    own = cos[rows, labels].copy()
    cos[rows, labels] = -np.inf
    stats = eqm_stats(torch.zeros(()), torch.from_numpy(own),
                      torch.from_numpy((cos > loss["t2"]).sum(axis=1)), t1=loss["t1"], floor=0.0)
    centres = w @ w.T
    np.fill_diagonal(centres, -np.inf)
    return {
        "hard": float(stats["hard_fraction"]),
        "inter": float(stats["inter_violation_fraction"]),
        "ideal": float(stats["case_ideal"]),
        "closest_centres_deg": float(np.degrees(np.arccos(min(centres.max(), 1.0)))),
    }


def main(runs: list[str]) -> None:
    for run in runs:
        if not (Path(run) / "analysis" / "features.npz").is_file():
            print(f"Error: {run}/analysis/features.npz is missing: run 'eqm analyze {run}' "
                  "first (it is written for 2-D/3-D embeddings)", file=sys.stderr)
            sys.exit(2)
        values = "  ".join(f"{key} {value:.3g}" for key, value in cases(Path(run)).items())
        print(f"{run}: {values}")


if __name__ == "__main__":
    main(sys.argv[1:])
