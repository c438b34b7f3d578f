"""A small sweep of EqM's (t1, t2) on a short version of the imbalance-eqm recipe.

For each (t1, t2) pair this trains `recipes/imbalance-eqm.yaml` with `--set loss.t1=...
--set loss.t2=...` and fewer epochs (the same code path as `eqm train RECIPE --set ...`),
then runs the analysis of `eqm analyze RUN --head-classes 80` twice: on the closed-set
test split (identification accuracy of classes with few / many training images) and on
the training split (per-class inter-class margin and intra-class scope, left on disk). It
prints one table and writes JSON.

Columns (angles in degrees; CV = coefficient of variation = std / mean over classes;
"few" = classes with fewer than 80 training images, "many" = the rest):

- `verif %`: 10-fold verification accuracy on the synthetic held-out identities (flip on);
- `margin` / `scope`: mean over all classes of the inter-class margin (min angle between
  the class centre and any other) and of the intra-class scope (max angle between the
  class's training features and its centre);
- `CV margin few/many`, `CV scope few/many`: their CVs within each group;
- `acc few/many %`: closed-set identification accuracy (mean over classes) on the
  held-out test images;
- `hard %`: training samples with cos to own centre < t1.

Selection criterion (printed as `chosen`): the highest verification accuracy; every pair
within `--tolerance` percentage points of it (default 0.5 pp, about half a fold std at
6,000 pairs) counts as tied, and among the tied ones the pair with the smallest CV of
margins over all classes wins (the quantity EqM is meant to equalize).

Usage (about 2-3 minutes per pair on a 2-core CPU; one intra-op thread is the default
because two OpenMP threads collapse when the CPU is shared, see docs/performance.md):

    python benchmarks/eqm_sweep.py                          # the default 6 pairs, 3 epochs
    python benchmarks/eqm_sweep.py --pairs 0.5:0.1,0.6:0.2 --epochs 2 --out runs/sweep2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = "0.4:0.1,0.5:0.0,0.5:0.1,0.5:0.2,0.6:0.1,0.6:0.2"


def parse_pairs(text: str) -> list[tuple[float, float]]:
    """`'0.5:0.1,0.6:0.2'` -> [(0.5, 0.1), (0.6, 0.2)]; t1 must exceed t2."""
    pairs = []
    for item in text.split(","):
        t1_text, t2_text = item.split(":")
        t1, t2 = float(t1_text), float(t2_text)
        if t1 <= t2:
            raise SystemExit(f"t1 must be greater than t2, got {item}")
        pairs.append((t1, t2))
    return pairs


def _group(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return summary["groups"][name]


def run_pair(
    recipe_path: Path,
    t1: float,
    t2: float,
    epochs: int,
    out_root: Path,
    head_classes: int,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """Train one short EqM run and analyze it; returns one row of the sweep table."""
    from eqmcli.analysis import analyze_run
    from eqmcli.recipe import load_recipe
    from eqmcli.train import train

    overrides = [
        f"loss.t1={t1}",
        f"loss.t2={t2}",
        f"train.epochs={epochs}",
        f"eval.every_epochs={epochs}",
        "train.device=cpu",
        *(extra or []),
    ]
    recipe = load_recipe(recipe_path, overrides)
    run_dir = out_root / f"t1_{t1:g}-t2_{t2:g}"
    started = time.perf_counter()
    summary = train(recipe, run_dir, force=True, progress=False)
    train_seconds = time.perf_counter() - started
    verification = summary.evaluations[-1]
    test = analyze_run(
        run_dir, head_classes=head_classes, split="test", device="cpu", progress=False
    ).summary
    geometry = analyze_run(
        run_dir, head_classes=head_classes, split="train", device="cpu", progress=False
    ).summary
    everything, few, many = (_group(geometry, g) for g in ("all", "few", "many"))
    return {
        "t1": t1,
        "t2": t2,
        "run": str(run_dir),
        "epochs": epochs,
        "overrides": overrides,
        "verification_accuracy": verification["accuracy"],
        "verification_accuracy_std": verification["accuracy_std"],
        "margin_mean_deg": everything["margin_deg"]["mean"],
        "scope_max_mean_deg": everything["scope_max_deg"]["mean"],
        "margin_cv_all": everything["margin_deg"]["cv"],
        "margin_cv_few": few["margin_deg"]["cv"],
        "margin_cv_many": many["margin_deg"]["cv"],
        "scope_max_cv_few": few["scope_max_deg"]["cv"],
        "scope_max_cv_many": many["scope_max_deg"]["cv"],
        "test_accuracy_few": _group(test, "few")["accuracy"],
        "test_accuracy_many": _group(test, "many")["accuracy"],
        "hard_fraction_train": everything["hard_fraction"],
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(train_seconds, 1),
    }


def choose(rows: list[dict[str, Any]], tolerance_pp: float) -> dict[str, Any]:
    """Best verification accuracy; ties within `tolerance_pp` go to the lowest margin CV."""
    best = max(r["verification_accuracy"] for r in rows)
    tied = [r for r in rows if 100 * (best - r["verification_accuracy"]) <= tolerance_pp]
    return min(tied, key=lambda r: (r["margin_cv_all"] is None, r["margin_cv_all"] or 0.0))


def _num(value: float | None, spec: str, scale: float = 1.0) -> str:
    """`value * scale` formatted with `spec`, or '-' when undefined (e.g. an empty group)."""
    return "-" if value is None else format(scale * value, spec)


def render(rows: list[dict[str, Any]], chosen: dict[str, Any] | None) -> str:
    """The sweep as a markdown table (also printed)."""
    header = (
        "| t1 | t2 | verif % | margin | scope | CV margin few | CV margin many "
        "| CV scope few | CV scope many | acc few % | acc many % | hard % | s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        mark = " **(chosen)**" if chosen is not None and r is chosen else ""
        verification = (
            f"{_num(r['verification_accuracy'], '.2f', 100)} ± "
            f"{_num(r['verification_accuracy_std'], '.2f', 100)}"
        )
        cells = [
            f"{r['t1']:g}",
            f"{r['t2']:g}{mark}",
            verification,
            _num(r["margin_mean_deg"], ".1f"),
            _num(r["scope_max_mean_deg"], ".1f"),
            _num(r["margin_cv_few"], ".3f"),
            _num(r["margin_cv_many"], ".3f"),
            _num(r["scope_max_cv_few"], ".3f"),
            _num(r["scope_max_cv_many"], ".3f"),
            _num(r["test_accuracy_few"], ".1f", 100),
            _num(r["test_accuracy_many"], ".1f", 100),
            _num(r["hard_fraction_train"], ".1f", 100),
            f"{r['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "imbalance-eqm.yaml")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="t1:t2 pairs, comma separated")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each short run")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="run directories")
    parser.add_argument("--json", type=Path, default=None, help="default: OUT/sweep.json")
    parser.add_argument("--head-classes", type=int, default=80)
    parser.add_argument("--tolerance", type=float, default=0.5, help="tie, in accuracy pp")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="extra recipe override for every run, e.g. --set train.batch_size=64",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    pairs = parse_pairs(args.pairs)
    rows = []
    for t1, t2 in pairs:
        row = run_pair(
            args.recipe, t1, t2, args.epochs, args.out, args.head_classes, args.overrides
        )
        rows.append(row)
        print(
            f"t1={t1:g} t2={t2:g}: verification {100 * row['verification_accuracy']:.2f}%, "
            f"margin CV {row['margin_cv_all']:.3f} ({row['seconds']:.0f} s)",
            flush=True,
        )
    chosen = choose(rows, args.tolerance)
    table = render(rows, chosen)
    print(table)
    print(f"chosen: t1={chosen['t1']:g} t2={chosen['t2']:g}")
    out_json = args.json or args.out / "sweep.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "recipe": str(args.recipe),
        "epochs": args.epochs,
        "threads": args.threads,
        "overrides": args.overrides,
        "criterion": (
            f"highest verification accuracy; pairs within {args.tolerance} pp tie; "
            "among them the lowest CV of inter-class margins over all classes"
        ),
        "chosen": {"t1": chosen["t1"], "t2": chosen["t2"]},
        "rows": rows,
        "table": table,
    }
    out_json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
