"""Every `eqm bench` figure carries the machine it was measured on (CPU model and flags)."""

from __future__ import annotations

import json
from pathlib import Path

from eqmcli.devices import describe_machine, machine


def test_machine_names_the_cpu_its_isa_flags_cpus_memory_and_load():
    found = machine()
    assert found["cpu_model"] and found["logical_cpus"] >= 1
    assert set(found["cpu_flags"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                       "amx_tile", "asimd", "sve"}
    line = describe_machine({"cpu_model": "Some CPU", "cpu_flags": ["avx2", "amx_bf16"],
                             "logical_cpus": 2, "memory_gib": 23.5, "load_average_1min": 1.5})
    assert line == "Some CPU, 2 CPUs (avx2, amx_bf16), 23.5 GiB, load 1.5"


def test_bench_train_json_and_console_carry_the_machine(tmp_path: Path, eqm):
    out = tmp_path / "train.json"
    args = ["bench", "train", "--backbone", "tiny", "--size", "24", "--batch", "4",
            "--classes", "10", "--steps", "1", "--warmup", "0", "--device", "cpu",
            "--no-compile", "--json", str(out)]
    result = eqm(*args)
    assert result.exit_code == 0, result.output
    host = json.loads(out.read_text())["environment"]["machine"]
    assert host["cpu_model"] == machine()["cpu_model"]
    assert f"machine: {host['cpu_model']}" in result.output


def test_bench_heads_json_without_an_environment_gets_the_machine_at_top_level(tmp_path: Path, eqm):
    out = tmp_path / "heads.json"
    args = ["bench", "heads", "--head", "eqm", "--classes", "20", "--dim", "8",
            "--batch", "4", "--repeats", "1", "--json", str(out)]
    result = eqm(*args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["machine"]["cpu_model"] == machine()["cpu_model"]
    assert "machine: " in result.output
