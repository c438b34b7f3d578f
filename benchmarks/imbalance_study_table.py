"""The tables of docs/imbalance-study.md: mean ± 95% CI over seeds per group, as Markdown.

Reads the JSON of `eqm compare ... --json` on stdin (one group per run or sweep config)
and prints one row per group; the last column, the mean angle between a training image
and its class centre (all classes), comes from each run's `analysis/summary.json`.
The interval is Student's t over the group's runs: mean ± t(0.975, n - 1) · std / √n
(std: sample standard deviation, ddof 1); a group of one run gets its value alone.
Fractions are shown as percentages, angles in degrees, CVs as is.

    eqm compare runs/study/final-am runs/study/final-eqm --json \
      | python benchmarks/imbalance_study_table.py [--per-seed docs/data/FILE.csv]

`--per-seed FILE.csv` also writes every run's value of every column (one row per group,
run and metric), so that claims about single seeds can be checked later.

`--welch-from-summary FILE.csv` instead re-derives the Welch tests of each group against
the first from a table of means and 95% half-widths (columns group, metric, unit, mean,
half_width_95, n; e.g. docs/data/imbalance-pass2-summary.csv, the pass-2 table of
docs/imbalance-study.md), with Holm-adjusted p-values over all the tests printed:

    python benchmarks/imbalance_study_table.py --welch-from-summary \
      docs/data/imbalance-pass2-summary.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from scipy import stats

from eqmcli.experiments.compare import holm_adjust, welch_contrast_of_moments
from eqmcli.experiments.results import is_fraction, read_run_results

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


def print_table(report: dict) -> None:
    """The Markdown table of an `eqm compare --json` report."""
    headers = [header for _, header in COLUMNS] + [MEAN_ANGLE]
    print("| group | runs | " + " | ".join(headers) + " |")
    print("|---|---:|" + "---:|" * len(headers))
    for group in report["groups"]:
        metrics = group["metrics"]
        cells = [cell(m, metrics[m]["values"] if m in metrics else []) for m, _ in COLUMNS]
        cells.append(cell("scope_mean_deg", mean_angles(group["runs"])))
        print(f"| {group['name']} | {len(group['runs'])} | " + " | ".join(cells) + " |")


def write_per_seed(report: dict, path: Path) -> None:
    """One CSV row per group, run and metric of the table, read from each run's own files
    (fractions as stored, in [0, 1]; angles in degrees)."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["group", "run", "metric", "value"])
        for group in report["groups"]:
            for run in group["runs"]:
                metrics = read_run_results(Path(run)).metrics
                for metric, _ in COLUMNS:
                    if metric in metrics:
                        writer.writerow([group["name"], run, metric, metrics[metric]])
                for angle in mean_angles([run]):
                    writer.writerow([group["name"], run, "scope_mean_deg", angle])


def welch_from_summary(path: Path) -> list[dict]:
    """Every group of the summary CSV against its first group, metric by metric: the
    Welch test from the means and 95% half-widths (sd = half · √n / t(0.975, n − 1)),
    and Holm's adjustment over all the tests together."""
    rows = list(csv.DictReader(path.open()))
    moments: dict[str, dict[str, tuple[float, float, int]]] = {}
    for row in rows:
        n = int(row["n"])
        sd = float(row["half_width_95"]) * math.sqrt(n) / float(stats.t.ppf(0.975, n - 1))
        moments.setdefault(row["group"], {})[row["metric"]] = (float(row["mean"]), sd**2, n)
    units = {row["metric"]: row["unit"] for row in rows}
    first, *others = moments
    tests = []
    for metric in moments[first]:
        for group in others:
            (mean_a, var_a, n_a) = moments[first][metric]
            (mean_b, var_b, n_b) = moments[group][metric]
            result = welch_contrast_of_moments(
                [(-1.0, mean_a, var_a, n_a), (1.0, mean_b, var_b, n_b)])
            tests.append({"metric": metric, "unit": units[metric], "a": first, "b": group,
                          "result": result})
    for test, holm in zip(tests, holm_adjust([t["result"].p_value for t in tests]), strict=True):
        test["holm_p"] = holm
    return tests


def print_welch(tests: list[dict]) -> None:
    """The Welch tests as a Markdown table, raw and Holm-adjusted p."""
    print(f"| metric | comparison | difference [95% CI] | df | p | Holm p ({len(tests)} tests) |")
    print("|---|---|---|---:|---:|---:|")
    for test in tests:
        r, unit = test["result"], " pp" if test["unit"] == "%" else ""
        digits = 3 if not unit else 2
        print(f"| {test['metric']} | {test['b']} − {test['a']} | {r.difference:+.{digits}f}{unit} "
              f"[{r.low:+.{digits}f}, {r.high:+.{digits}f}] | {r.df:.1f} | {r.p_value:.2g} | "
              f"{test['holm_p']:.2g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-seed", type=Path, help="also write every run's values here (CSV)")
    parser.add_argument("--welch-from-summary", type=Path,
                        help="re-derive the Welch tests (and Holm's p) from this summary CSV")
    args = parser.parse_args()
    if args.welch_from_summary:
        print_welch(welch_from_summary(args.welch_from_summary))
        return
    report = json.load(sys.stdin)
    print_table(report)
    if args.per_seed:
        write_per_seed(report, args.per_seed)


if __name__ == "__main__":
    main()
