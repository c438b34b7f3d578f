"""How much each loss's metric changes from the smallest to the largest scale s of a sweep.

Reads `OUT/sweep.json` of a sweep over `loss.name` x `loss.scale` (docs/imbalance-study.md,
"The scale claim") and prints, per loss, the drop mean(metric at the smallest s) −
mean(metric at the largest s) with its 95% Welch interval, then every pair of losses'
difference of drops (a contrast of four independent group means,
`eqmcli.experiments.compare.welch_contrast`). Fractions are printed in percentage points.

    python benchmarks/scale_spread.py runs/study/scale [--metric accuracy]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from eqmcli.errors import UserError
from eqmcli.experiments.compare import welch_contrast
from eqmcli.experiments.sweep import require_sweep_file


def drops(sweep: dict, metric: str) -> dict[str, tuple[float, float, list[tuple[float, list]]]]:
    """Per loss: (smallest s, largest s, the contrast groups of metric(small) − metric(large))."""
    values: dict[str, dict[float, list[float]]] = {}
    for config in sweep["configs"]:
        found = config["metrics"].get(metric)
        if found:
            loss, scale = config["assignments"]["loss.name"], config["assignments"]["loss.scale"]
            values.setdefault(loss, {})[scale] = [100 * v for v in found["values"]]
    result = {}
    for loss, by_scale in values.items():
        low, high = min(by_scale), max(by_scale)
        result[loss] = (low, high, [(1.0, by_scale[low]), (-1.0, by_scale[high])])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args()
    try:
        found = drops(require_sweep_file(args.sweep, ("grid", "configs")), args.metric)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    for loss, (low, high, groups) in found.items():
        r = welch_contrast(groups)
        print(f"{loss}: {args.metric} at s {low:g} − at s {high:g} = {r.difference:+.2f} pp "
              f"± {r.high - r.difference:.2f} (95% Welch, df {r.df:.1f})")
    for a, b in itertools.combinations(found, 2):
        flipped = [(-sign, v) for sign, v in found[b][2]]
        r = welch_contrast(found[a][2] + flipped)
        print(f"drop of {a} − drop of {b}: {r.difference:+.2f} pp, 95% CI "
              f"[{r.low:+.2f}, {r.high:+.2f}] (df {r.df:.1f})")


if __name__ == "__main__":
    main()
