"""`eqmcli.run.rundir`'s readers of a run's files: `metrics.jsonl` and analysis summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eqmcli.errors import UserError
from eqmcli.run.rundir import RunPaths, read_analysis_summary

RECORDS = [
    {"kind": "step", "step": 1, "loss": 2.0},
    {"kind": "eval", "epoch": 1, "step": 2, "benchmark": "lfw", "accuracy": 0.9},
    {"kind": "epoch", "epoch": 1, "step": 2},
]


def _metrics(run: Path, tail: bytes = b"") -> RunPaths:
    paths = RunPaths(run)
    run.mkdir(exist_ok=True)
    lines = [json.dumps(r).encode() for r in RECORDS]
    paths.metrics.write_bytes(b"\n".join([lines[0], b"[1, 2]", b"", b"\xff\xfe", *lines[1:]])
                              + b"\n" + tail)
    return paths


def test_metric_records_skips_what_is_not_a_record_and_filters_by_kind(tmp_path):
    paths = _metrics(tmp_path / "run", tail=b'{"kind": "step", "st')  # cut off by a crash
    assert paths.metric_records() == RECORDS
    assert paths.metric_records(("eval", "epoch")) == RECORDS[1:]
    assert RunPaths(tmp_path / "absent").metric_records() == []


def test_metric_records_tail_reads_only_the_last_bytes_and_skips_the_cut_first_line(tmp_path):
    paths = _metrics(tmp_path / "run")
    last_two = len(json.dumps(RECORDS[1])) + len(json.dumps(RECORDS[2])) + 2
    assert paths.metric_records(tail_bytes=last_two) == RECORDS[1:]
    assert paths.metric_records(tail_bytes=last_two - 5) == RECORDS[2:]


def test_read_analysis_summary_is_none_when_absent_and_one_sentence_when_unreadable(tmp_path):
    assert read_analysis_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text('{"head_classes": 80}')
    assert read_analysis_summary(tmp_path) == {"head_classes": 80}
    (tmp_path / "summary.json").write_text('{"head_classes": 8')
    with pytest.raises(UserError, match=r"summary\.json is not readable JSON"):
        read_analysis_summary(tmp_path)
    (tmp_path / "summary.json").write_text("[80]")
    with pytest.raises(UserError, match="does not hold a JSON object"):
        read_analysis_summary(tmp_path)
