"""benchmarks/scale_spread.py: the drop of a metric over s and its Welch interval."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale_spread.py"


def _module():
    spec = importlib.util.spec_from_file_location("scale_spread", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_contrast_of_two_groups_matches_a_hand_computed_welch_interval():
    from eqmcli.experiments.compare import welch_contrast

    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]  # variances 1 and 4, n = 3 each
    result = welch_contrast([(1.0, a), (-1.0, b)])
    estimate, half, df = result.difference, result.high - result.difference, result.df
    assert estimate == pytest.approx(2.0 - 6.0)
    var = 1 / 3 + 4 / 3
    assert df == pytest.approx(var**2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2))  # 2.941...
    # t(0.975, df) lies between the table values 4.303 (df 2) and 3.182 (df 3): 3.219 at 2.94
    assert half == pytest.approx(3.219 * math.sqrt(var), rel=1e-3)


def test_script_prints_each_loss_drop_and_the_pairwise_differences(tmp_path, capsys, monkeypatch):
    configs = [
        {"assignments": {"loss.name": loss, "loss.scale": s},
         "metrics": {"accuracy": {"values": values}}}
        for loss, s, values in [("eqm", 16, [0.95, 0.96, 0.97]), ("eqm", 64, [0.94, 0.95, 0.96]),
                                ("am", 16, [0.97, 0.97, 0.98]), ("am", 64, [0.95, 0.95, 0.96])]
    ]
    grid = {"loss.name": ["eqm", "am"], "loss.scale": [16, 64]}
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": grid, "configs": configs}))
    monkeypatch.setattr("sys.argv", ["scale_spread.py", str(tmp_path)])
    _module().main()
    out = capsys.readouterr().out
    # intervals by hand: each group has variance 1 (eqm) or 1/3 (am) in pp², n = 3, so the
    # eqm drop has se² = 2/3 and the am drop 2/9, both with Welch df 4, t(0.975, 4) = 2.7764;
    # the difference of drops has se² = 8/9 and df (8/9)² / (2·(1/3)²/2 + 2·(1/9)²/2) = 6.4,
    # t(0.975, 6.4) = 2.4103 (between the table's 2.447 at df 6 and 2.365 at df 7)
    eqm_half, am_half = 2.7764 * math.sqrt(2 / 3), 2.7764 * math.sqrt(2 / 9)
    diff_half = 2.4103 * math.sqrt(8 / 9)
    assert f"eqm: accuracy at s 16 − at s 64 = +1.00 pp ± {eqm_half:.2f} (95% Welch, df 4.0)" in out
    assert f"am: accuracy at s 16 − at s 64 = +2.00 pp ± {am_half:.2f} (95% Welch, df 4.0)" in out
    assert (f"drop of eqm − drop of am: -1.00 pp, 95% CI [{-1 - diff_half:+.2f}, "
            f"{-1 + diff_half:+.2f}] (df 6.4)") in out


def test_script_refuses_a_folder_without_a_sweep_in_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["scale_spread.py", str(tmp_path)])
    with pytest.raises(SystemExit) as stopped:
        _module().main()
    assert stopped.value.code == 2
    assert "holds no sweep.json; is it the --out of an eqm sweep?" in capsys.readouterr().err
