"""The tables of docs/imbalance-study.md: mean ± 95% CI over seeds per group, as Markdown.

Reads the JSON of `eqm compare ... --json` on stdin (one group per run or sweep config)
and prints one row per group; the last column, the mean angle between a training image
and its class centre (all classes), comes from each run's `analysis/summary.json`.
The interval is Student's t over the group's runs: mean ± t(0.975, n - 1) · std / √n
(std: sample standard deviation, ddof 1); a group of one run gets its value alone.
Fractions are shown as percentages, angles in degrees, CVs as is.

    eqm compare runs/study/final-am runs/study/final-eqm --json \
      | python benchmarks/imbalance_study_table.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from scipy import stats

from eqmcli.run_results import is_fraction

COLUMNS = (
    ("accuracy", "verification %"),
    ("tar@far=1e-03", "TAR@FAR=1e-3 %"),
    ("closed_accuracy_few", "closed-set <80 %"),
    ("closed_accuracy_many", "closed-set ≥80 %"),
    ("margin_cv_few", "margin CV <80"),
    ("margin_cv_many", "margin CV ≥80"),
    ("scope_cv_few", "scope CV <80"),
    ("scope_cv_many", "scope CV ≥80"),
    ("margin_mean_all", "margin (deg)"),
    ("scope_mean_all", "scope, max angle (deg)"),
)
MEAN_ANGLE = "mean angle (deg)"


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t confidence interval (None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)


def mean_angles(runs: list[str]) -> list[float]:
    """Each run's mean angle (degrees) of training images to their class centre."""
    found = []
    for run in runs:
        summary = Path(run) / "analysis" / "summary.json"
        if summary.is_file():
            groups = json.loads(summary.read_text())["groups"]
            found.append(float(groups["all"]["scope_mean_deg"]["mean"]))
    return found


def cell(metric: str, values: list[float]) -> str:
    """`mean ± half-width` with 2 decimals for percentages and angles, 3 for CVs."""
    if not values:
        return "-"
    scale = 100.0 if is_fraction(metric) else 1.0
    digits = 3 if "_cv_" in metric else (1 if "mean" in metric else 2)
    mean, half = mean_interval([scale * v for v in values])
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"


def main() -> None:
    """Print the Markdown table of the report on stdin."""
    report = json.load(sys.stdin)
    headers = [header for _, header in COLUMNS] + [MEAN_ANGLE]
    print("| group | runs | " + " | ".join(headers) + " |")
    print("|---|---:|" + "---:|" * len(headers))
    for group in report["groups"]:
        metrics = group["metrics"]
        cells = [cell(m, metrics[m]["values"] if m in metrics else []) for m, _ in COLUMNS]
        cells.append(cell("scope_mean_deg", mean_angles(group["runs"])))
        print(f"| {group['name']} | {len(group['runs'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
