"""benchmarks/margin_search_before_after.py: the documented `--check` command runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "margin_search_before_after.py"


def test_the_documented_check_command_runs_and_both_searches_agree_with_float64():
    has_old = subprocess.run(["git", "cat-file", "-e", "88581db^{commit}"], cwd=ROOT,
                             capture_output=True).returncode == 0
    if not has_old:
        pytest.skip("needs the repository's history (commit 88581db); this clone is shallow")
    done = subprocess.run([sys.executable, str(SCRIPT), "--classes", "300", "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "classes whose nearest class differs: 0" in done.stdout
    assert "differing from the float64 search: after 0, before 0" in done.stdout
