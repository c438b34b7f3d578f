"""`eqmcli.atomic.write_json`: the one writer of the run directory's result JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eqmcli.atomic import stale_temporaries, write_json


def test_write_json_writes_strict_json_of_numpy_values_paths_and_non_finite_floats(tmp_path):
    data = {
        "count": np.int64(3), "ratio": np.float32(0.5), "ok": np.bool_(True),
        "missing": float("nan"), "overflow": np.float64(np.inf), "pair": (1, 2),
        "file": Path("runs/a/model.pt"), 7: "a key that is not a string",
    }
    path = write_json(tmp_path / "new" / "folder" / "result.json", data)
    text = path.read_text()
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "count": 3, "ratio": 0.5, "ok": True, "missing": None, "overflow": None,
        "pair": [1, 2], "file": "runs/a/model.pt", "7": "a key that is not a string",
    }


def test_write_json_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"old": list(range(1000))})
    write_json(path, {"new": 1})
    assert json.loads(path.read_text()) == {"new": 1}
    assert stale_temporaries(tmp_path) == []
