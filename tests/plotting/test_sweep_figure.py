"""The sweep figure joins points with lines only along a numeric swept key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eqmcli.plotting.sweeps import figure_sweep


def _loss_by_scale_sweep(folder: Path) -> Path:
    """sweep.json of a loss.name x loss.scale grid, two seeds per config."""
    configs = []
    for loss, base in (("eqm", 0.9), ("am", 0.8)):
        for scale in (16, 64):
            values = [base, base + 0.02]
            stats = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)),
                     "n": 2, "values": values}
            configs.append({"config": f"loss.name={loss},loss.scale={scale}",
                            "assignments": {"loss.name": loss, "loss.scale": scale},
                            "runs": [], "metrics": {"accuracy": stats}})
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({
        "grid": {"loss.name": ["eqm", "am"], "loss.scale": [16, 64]}, "seeds": 2,
        "members": [], "configs": configs}))
    return folder


def test_a_categorical_swept_key_is_drawn_as_unconnected_points(tmp_path: Path) -> None:
    ax = figure_sweep(_loss_by_scale_sweep(tmp_path / "s"), ["accuracy"], "loss.name").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["eqm", "am"]
    series = [container.lines[0] for container in ax.containers]
    assert len(series) == 2  # one per scale
    assert all(line.get_linestyle() == "None" for line in series)
    first, second = (np.asarray(line.get_xdata(), dtype=float) for line in series)
    assert (first < second).all() and (np.abs(first - second) < 0.5).all()  # dodged, same tick
    np.testing.assert_allclose((first + second) / 2, [0, 1])


def test_a_numeric_swept_key_is_drawn_as_lines(tmp_path: Path) -> None:
    ax = figure_sweep(_loss_by_scale_sweep(tmp_path / "s"), ["accuracy"], "loss.scale").axes[0]
    for container in ax.containers:
        line = container.lines[0]
        assert line.get_linestyle() == "-"
        np.testing.assert_allclose(np.asarray(line.get_xdata(), dtype=float), [16, 64])
