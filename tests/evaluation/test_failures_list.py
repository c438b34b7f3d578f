"""The pairs a verification got wrong, with their images, in `<set>.failures.csv` (issue 19
item 5, its last part)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from pair_files import LACKING, PAIRS, write_bin

from eqmcli.evaluation.pair_outcomes import pair_correctness


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_failures_list_the_wrong_pairs_with_their_image_paths(
    tmp_path, pairs_file, untrained_run, eqm
):
    run = untrained_run
    result = eqm("eval", str(run), "--pairs", str(pairs_file), "--no-flip",
                 "--device", "cpu", "--missing", "count-wrong")
    assert result.exit_code == 0, result.output
    assert "pairs.failures.csv" in result.output
    rows = _rows(run / "eval" / "pairs.failures.csv")
    correct, issame = pair_correctness(run / "eval", "pairs")
    assert [int(r["pair"]) for r in rows] == np.flatnonzero(~correct).tolist()
    lines = pairs_file.read_text().splitlines()
    for row in rows:
        k = int(row["pair"])
        a, b, label = lines[k].split()
        assert (Path(row["image_a"]).name, Path(row["image_b"]).name) == (a, b)
        assert Path(row["image_a"]).parent == pairs_file.parent
        assert row["label"] == ("same" if label == "1" else "different") and issame[k] == (
            label == "1")
        assert row["reason"] == ("missing image" if k in LACKING else "wrong")
        assert row["fold"] == str(k // 2)
    assert {int(r["pair"]) for r in rows} >= set(LACKING)
    assert len(rows) < PAIRS


def test_failures_of_a_bin_name_the_images_by_their_index(tmp_path, untrained_run, eqm):
    run = untrained_run
    write_bin(tmp_path / "heldout.bin")
    result = eqm("eval", str(run), "--pairs", str(tmp_path / "heldout.bin"),
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = _rows(run / "eval" / "heldout.failures.csv")
    assert rows, "an untrained model gets some of the 20 pairs wrong"
    for row in rows:
        k = int(row["pair"])
        assert (row["image_a"], row["image_b"]) == (f"heldout#{2 * k}", f"heldout#{2 * k + 1}")
        assert row["reason"] == "wrong" and -1.0 <= float(row["score"]) <= 1.0
