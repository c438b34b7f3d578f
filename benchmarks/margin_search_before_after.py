"""The per-class margin search before and after issue 11 item 5, in one process.

"Before" is `nearest_centers` of eqmcli/analysis.py at commit 88581db (chunked float32
rows, argmax, float64 copies), read with `git show`; "after" is today's
`eqmcli.analysis.statistics.nearest_centers` (`eqmcli.analysis.nearest`). Both run on the
same random centres (`eqm bench analysis` uses the same ones); wall and CPU seconds and the
peak extra RSS of each are printed, then how many classes the two answers differ on.
`--check` also runs the plain float64 search (several minutes at C = 85,742).

    python benchmarks/margin_search_before_after.py --classes 85742 [--check]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from eqmcli.analysis.nearest import exact_nearest
from eqmcli.analysis.statistics import nearest_centers
from eqmcli.bench.memory import peak_memory
from eqmcli.bench.nearest_search import random_centers

BEFORE = "88581db"
ROOT = Path(__file__).resolve().parents[1]


def old_nearest_centers() -> Callable:
    """`nearest_centers` as it was at commit BEFORE."""
    source = subprocess.run(["git", "show", f"{BEFORE}:eqmcli/analysis.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "analysis_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("analysis_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module.nearest_centers


def timed(name: str, search: Callable[[], np.ndarray]) -> tuple[dict, np.ndarray]:
    """Run `search`; its wall and CPU seconds and peak extra RSS (MiB)."""
    with peak_memory(torch.device("cpu")) as memory:
        wall, cpu = time.perf_counter(), time.process_time()
        nearest = search()
        row = {"search": name, "wall_s": time.perf_counter() - wall,
               "cpu_s": time.process_time() - cpu}
    row["peak_extra_mib"] = (memory.extra_bytes or 0) / 2**20
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}),
          flush=True)
    return row, nearest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=85742)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--check", action="store_true", help="also the float64 reference")
    args = parser.parse_args()
    centers = random_centers(args.classes, args.dim)
    before = old_nearest_centers()
    after_row, after = timed("after", lambda: nearest_centers(centers)[1])
    before_row, old = timed(f"before ({BEFORE})", lambda: before(centers)[1])
    print(f"classes whose nearest class differs: {int(np.sum(old != after))}; "
          f"after/before wall time {after_row['wall_s'] / before_row['wall_s']:.2f}")
    if args.check:
        _, exact = timed("float64 reference", lambda: exact_nearest(centers)[1])
        print(f"differing from the float64 search: after {int(np.sum(after != exact))}, "
              f"before {int(np.sum(old != exact))}")


if __name__ == "__main__":
    sys.exit(main())
