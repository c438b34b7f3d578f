"""How much each loss's metric changes from the smallest to the largest scale s of a sweep.

Reads `OUT/sweep.json` of a sweep over `loss.name` x `loss.scale` (docs/imbalance-study.md,
"The scale claim") and prints, per loss, the drop mean(metric at the smallest s) −
mean(metric at the largest s) with its 95% Welch interval, then every pair of losses'
difference of drops (a contrast of four independent group means: variance Σ var_i / n_i,
Welch–Satterthwaite degrees of freedom). Fractions are printed in percentage points.

    python benchmarks/scale_spread.py runs/study/scale [--metric accuracy]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

from scipy import stats


def contrast(groups: list[tuple[float, list[float]]]) -> tuple[float, float, float]:
    """Σ sign·mean over (sign, values) groups: (estimate, 95% half-width, Welch df)."""
    estimate = sum(sign * sum(v) / len(v) for sign, v in groups)
    parts = [stats.tvar(v) / len(v) for _, v in groups]  # var of each group's mean
    pairs = zip(parts, groups, strict=True)
    df = sum(parts) ** 2 / sum(p * p / (len(v) - 1) for p, (_, v) in pairs)
    return estimate, stats.t.ppf(0.975, df) * math.sqrt(sum(parts)), df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args()
    sweep = json.loads((args.sweep / "sweep.json").read_text())
    values: dict[str, dict[float, list[float]]] = {}
    for config in sweep["configs"]:
        stats_ = config["metrics"].get(args.metric)
        if stats_:
            loss, scale = config["assignments"]["loss.name"], config["assignments"]["loss.scale"]
            values.setdefault(loss, {})[scale] = [100 * v for v in stats_["values"]]
    drops = {}
    for loss, by_scale in values.items():
        low, high = min(by_scale), max(by_scale)
        drops[loss] = [(1.0, by_scale[low]), (-1.0, by_scale[high])]
        estimate, half, df = contrast(drops[loss])
        print(f"{loss}: {args.metric} at s {low:g} − at s {high:g} = {estimate:+.2f} pp "
              f"± {half:.2f} (95% Welch, df {df:.1f})")
    for a, b in itertools.combinations(drops, 2):
        flipped = [(-sign, v) for sign, v in drops[b]]
        estimate, half, df = contrast(drops[a] + flipped)
        print(f"drop of {a} − drop of {b}: {estimate:+.2f} pp, 95% CI "
              f"[{estimate - half:+.2f}, {estimate + half:+.2f}] (df {df:.1f})")


if __name__ == "__main__":
    main()
