"""The head benchmark (core function and `eqm bench heads`) at tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eqmcli.bench.heads import benchmark_heads
from eqmcli.errors import UserError


def test_benchmark_rows_are_relative_to_normface_measured_in_the_same_run() -> None:
    rows = benchmark_heads(["eqm", "arcface"], num_classes=30, embedding_dim=8, batch_size=4,
                           repeats=3, warmup=0)
    assert [row.name for row in rows] == ["normface", "eqm", "arcface"]
    base = rows[0]
    assert base.ratio == 1.0
    for row in rows:
        assert row.ms > 0 and row.samples == 3
        assert row.ratio == pytest.approx(row.ms / base.ms)


def test_benchmark_rejects_an_unknown_head() -> None:
    with pytest.raises(UserError, match="nosuchloss"):
        benchmark_heads(["nosuchloss"], num_classes=10, embedding_dim=4, batch_size=2, repeats=1)


def test_cli_bench_heads_prints_the_table_and_writes_json(tmp_path: Path, eqm) -> None:
    out = tmp_path / "heads.json"
    result = eqm("bench", "heads", "--classes", "50", "--dim", "16",
                 "--batch", "8", "--repeats", "1", "--json", str(out))
    assert result.exit_code == 0, result.output
    for name in ("normface", "eqm", "sphereface", "softmax"):
        assert name in result.output
    payload = json.loads(out.read_text())
    assert payload["classes"] == 50
    assert {row["name"] for row in payload["rows"]} >= {"normface", "eqm", "arcface", "focal"}
    bad = eqm("bench", "heads", "--classes", "50", "--dim", "16",
              "--batch", "8", "--repeats", "1", "--head", "bogus")
    assert bad.exit_code == 2
