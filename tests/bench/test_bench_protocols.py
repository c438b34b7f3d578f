"""`eqm bench protocols` runs at a tiny scale and reports every part (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path


def test_bench_protocols_reports_time_and_memory(tmp_path: Path, eqm) -> None:
    out = tmp_path / "protocols.json"
    result = eqm("bench", "protocols", "--scale", "0.001", "--dim", "64", "--json", str(out))
    assert result.exit_code == 0, result.output
    ijb, megaface = json.loads(out.read_text())["results"]
    assert ijb["benchmark"] == "ijbc-1to1" and ijb["sizes"]["pairs"] == 15_658
    assert set(ijb["parts"]) == {"templates", "pair scores", "ROC, TAR@FAR, AUC"}
    assert megaface["sizes"] == {"probes": 4, "distractors": 1000, "sets": 3}
    assert all(r["seconds"] > 0 and r["threads"] >= 1 for r in (ijb, megaface))
