"""`eqm eval --missing error|skip|count-wrong` (issue 19 item 4): pairs that name an image
file that does not exist refuse the set, are left out with a printed count, or are kept
as failures; the JSON records the choice and the count."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pair_files import LACKING, PAIRS
from typer.testing import Result

from eqmcli.evaluation.pair_outcomes import pair_correctness


def _eval(eqm: Callable[..., Result], run: Path, pairs: Path, *flags: str) -> Result:
    return eqm("eval", run, "--pairs", str(pairs), "--no-flip",
               "--device", "cpu", *flags)


def test_missing_images_refuse_the_set_by_default_naming_them(untrained_run, pairs_file, eqm):
    result = _eval(eqm, untrained_run, pairs_file)
    assert result.exit_code == 2, result.output
    assert "3.jpg" in result.output and "--missing skip" in result.output
    assert not (untrained_run / "eval" / "pairs.json").exists()
    result = _eval(eqm, untrained_run, pairs_file, "--missing", "ignore")
    assert result.exit_code == 2 and "--missing must be one of error, skip, count-wrong" in (
        result.output)


def test_skip_leaves_the_pairs_out_keeps_the_folds_and_says_how_many(
    untrained_run, pairs_file, eqm
):
    result = _eval(eqm, untrained_run, pairs_file, "--missing", "skip")
    assert result.exit_code == 0, result.output
    assert f"{len(LACKING)} pair(s) name one of 1 missing image(s)" in " ".join(
        result.output.split()) and "skipped" in result.output
    written = json.loads((untrained_run / "eval" / "pairs.json").read_text())
    assert written["pairs"] == PAIRS - len(LACKING)
    assert written["missing"] == {"policy": "skip", "pairs": len(LACKING), "images": 1}
    kept = [k for k in range(PAIRS) if k not in LACKING]
    folds = np.unique([k // 2 for k in kept], return_inverse=True)[1]  # 10 folds of 2 pairs
    with np.load(untrained_run / "eval" / "pairs.pairs.npz") as saved:  # 3 emptied, 7 kept whole
        np.testing.assert_array_equal(saved["fold"], folds)
    assert written["folds"] == 7
    assert (untrained_run / "eval" / "pairs_missing.txt").read_text().strip().endswith("3.jpg")


def test_count_wrong_keeps_the_pairs_as_failures(untrained_run, pairs_file, eqm):
    result = _eval(eqm, untrained_run, pairs_file, "--missing", "count-wrong")
    assert result.exit_code == 0, result.output
    assert "counted as failures" in result.output
    written = json.loads((untrained_run / "eval" / "pairs.json").read_text())
    assert written["pairs"] == PAIRS
    assert written["missing"] == {"policy": "count-wrong", "pairs": len(LACKING), "images": 1}
    correct, _ = pair_correctness(untrained_run / "eval", "pairs")
    assert not correct[LACKING].any(), "every pair with a missing image is a failure"
    skipped = _eval(eqm, untrained_run, pairs_file, "--missing", "skip",
                    "--out", untrained_run / "skip")
    assert skipped.exit_code == 0
    by_skip = json.loads((untrained_run / "skip" / "pairs.json").read_text())
    assert written["pairs_fingerprint"] != by_skip["pairs_fingerprint"], "not the same pairs"
