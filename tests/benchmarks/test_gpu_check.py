"""benchmarks/gpu_check.sh: its dry run (tiny sizes on the CPU) checks the script here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~25 s on a 2-core CPU: collecting the suite, one tiny bench
def test_gpu_check_dry_run_lists_every_cuda_test_and_writes_its_json(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run",
         "--only", "cuda tests", "--only", "bench head-cost"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    payload = json.loads((tmp_path / "gpu-check.json").read_text())
    checks = {c["name"]: c for c in payload["checks"]}
    assert {name: c["status"] for name, c in checks.items()} == {
        "cuda tests": "pass", "bench head-cost": "pass"}
    collected = "\n".join(checks["cuda tests"]["details"]["collected"])
    for test in ("test_nearest.py::test_cuda_search_matches_float64_brute_force",
                 "test_cuda.py::test_fp16_grad_scaler_skips_an_overflowing_step_and_no_other",
                 "test_cuda.py::test_sharded_head_and_partial_fc_over_nccl_on_two_gpus",
                 "test_cuda.py::test_resume_across_precisions_on_cuda"):
        assert test in collected
    assert "C=100:" in checks["bench head-cost"]["summary"]
    assert "bench head-cost  pass" in done.stdout, "the table is printed"
