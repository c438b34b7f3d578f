"""The figure of an `eqm sweep`: metrics against one swept parameter, mean ± std over seeds.

One panel per metric, side by side; in each, one line per combination of the other
swept parameters (a categorical swept key, e.g. `loss.name`, gets unconnected points,
each series shifted a little so their error bars do not hide each other), error bars =
the sample standard deviation over the config's finished seeds (none for a single seed).
Read from the configs of `OUT/sweep.json`; fractions are drawn as percentages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eqmcli.errors import UserError, shown
from eqmcli.experiments.results import axis_label, is_fraction
from eqmcli.experiments.sweep import SWEEP_FILE, require_sweep_file
from eqmcli.plotting.figures import save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def is_sweep(path: Path) -> bool:
    """True for a folder written by `eqm sweep` (it holds sweep.json)."""
    return (Path(path) / SWEEP_FILE).is_file()


def _x_key(grid: dict[str, list[Any]], x_key: str | None) -> str:
    """The swept key on the x axis: `x_key`, else the first numeric key with several values."""
    if x_key is not None:
        if x_key not in grid:
            raise UserError(f"--x {shown(x_key)} is not swept here; swept: {', '.join(grid)}")
        return x_key
    numeric = [k for k, v in grid.items()
               if len(v) > 1 and all(isinstance(x, int | float) for x in v)]
    several = [k for k, v in grid.items() if len(v) > 1]
    if not (numeric or several):
        raise UserError("the sweep varies no parameter (a --grid key with two or more values)")
    return (numeric or several)[0]


_DODGE = 0.08
"""Horizontal offset between series at one category of a categorical x axis (tick units)."""


def _panel(ax: Any, data: dict[str, Any], metric: str, x_key: str) -> None:
    """One metric against `x_key`: a line per combination of the other swept keys."""
    grid, configs = data["grid"], data["configs"]
    numeric = all(isinstance(v, int | float) for v in grid[x_key])
    position = {json.dumps(v): (v if numeric else i) for i, v in enumerate(grid[x_key])}
    scale = 100.0 if is_fraction(metric) else 1.0
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for config in configs:
        stats = config["metrics"].get(metric)
        if stats is None:
            continue
        others = [f"{k}={v}" for k, v in config["assignments"].items() if k != x_key]
        x = position[json.dumps(config["assignments"][x_key])]
        lines.setdefault(", ".join(others), []).append(
            (x, scale * stats["mean"], scale * (stats["std"] or 0.0)))
    for index, (label, points) in enumerate(lines.items()):
        points.sort()
        xs, ys, errors = zip(*points, strict=True)
        if not numeric:  # categories: no line between them; series side by side
            xs = tuple(x + _DODGE * (index - (len(lines) - 1) / 2) for x in xs)
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label or None,
                    linestyle="-" if numeric else "none")
    if not numeric:
        ax.set_xticks(range(len(grid[x_key])), [str(v) for v in grid[x_key]])
    ax.set_xlabel(x_key)
    ax.set_ylabel(axis_label(metric))
    ax.set_title(f"{metric} vs {x_key}")
    ax.grid(alpha=0.3)
    if any(lines):  # one line per value of the other swept keys
        ax.legend(fontsize="small")


def figure_sweep(
    sweep_dir: Path, metrics: list[str] | None = None, x_key: str | None = None
) -> Figure:
    """The sweep figure (see the module docstring): one panel per metric (default:
    accuracy) side by side; metric names as in `eqmcli.experiments.results`."""
    from matplotlib.figure import Figure

    metrics = metrics or ["accuracy"]
    data = require_sweep_file(sweep_dir, ("grid", "configs"))
    x_key = _x_key(data["grid"], x_key)
    for metric in metrics:
        if not any(metric in c["metrics"] for c in data["configs"]):
            raise UserError(f"no finished run of {sweep_dir} has the metric {shown(metric)}")
    fig = Figure(figsize=(6.4 * len(metrics), 4.4), layout="constrained")
    for index, metric in enumerate(metrics):
        _panel(fig.add_subplot(1, len(metrics), index + 1), data, metric, x_key)
    seeds = data.get("seeds")
    spread = ("one seed per config, no error bars" if seeds == 1
              else f"mean ± std over seeds ({seeds if seeds else '?'} per config)")
    fig.suptitle(f"{Path(sweep_dir).name}: {spread}")
    return fig


def draw_sweeps(
    sweeps: list[Path], metrics: list[str], x_key: str | None, out: Path | None
) -> dict[str, list[Path]]:
    """Save `sweep-<metric>[+<metric>...]-vs-<x>.png/.pdf` for each sweep (into `out` or
    its figures/)."""
    written = {}
    for sweep_dir in sweeps:
        key = _x_key(require_sweep_file(sweep_dir, ("grid", "configs"))["grid"], x_key)
        stem = f"sweep-{'+'.join(metrics)}-vs-{key}".replace("/", "_")
        fig = figure_sweep(sweep_dir, metrics, key)
        written[f"sweep {sweep_dir}"] = save_figure(fig, out or Path(sweep_dir) / "figures", stem)
    return written
