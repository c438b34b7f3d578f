"""Figures from the files the other commands write into run directories.

| figure | needs (per run) | shows |
|---|---|---|
| `fig5` | `analysis/per_class.csv` (+ `summary.json`) | margin, scope (deg) vs class size |
| `fig6` | `analysis/per_class.csv` (+ `summary.json`) | accuracy per class-size bin; hard vs easy |
| `curves` | `metrics.jsonl` | training loss vs step; verification accuracy vs epoch |
| `roc` | `eval/*.json` | ROC (TAR vs FAR, log FAR axis), one panel per benchmark |
| `sphere` | `analysis/features.npz` | Fig. 1: features and centres on the circle/sphere |

`eqm analyze` writes `features.npz` only for 2-D and 3-D embeddings, so `sphere` is drawn
for exactly those runs. Several runs are compared side by side (fig5, sphere: one column
per run) or overlaid with a legend naming each run by its directory name (fig6, curves,
roc). Figures are built on `matplotlib.figure.Figure` directly (no pyplot, no display:
the Agg canvas), and saved as PNG and PDF.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eqmcli.analysis.statistics import PerClassTable, size_bin_edges
from eqmcli.atomic import atomic_write
from eqmcli.errors import UserError, shown
from eqmcli.run.rundir import RunPaths, read_analysis_summary, read_json_object

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURES = ("fig5", "fig6", "curves", "roc", "sphere")
DEFAULT_HEAD_CLASSES = 80
CURVE_KINDS = ("step", "epoch", "eval")  # the metrics.jsonl records the curves draw
DPI = 150


# ------------------------------------------------------------------------ run files
def run_label(run: Path) -> str:
    """A run's name in legends and titles: its directory name."""
    return Path(run).resolve().name


def _labels(runs: Sequence[Path]) -> list[str]:
    names = [run_label(r) for r in runs]
    if len(set(names)) < len(names):  # same leaf name: add the parent folder
        names = [f"{Path(r).resolve().parent.name}/{run_label(r)}" for r in runs]
    return names


def accuracy_analysis_dir(run: Path) -> Path:
    """Where fig6 reads accuracies: the held-out test split when analyzed, else training."""
    analysis = RunPaths(Path(run)).analysis_dir
    test = analysis / "test"
    return test if (test / "per_class.csv").is_file() else analysis


def _missing(figure: str, run: Path) -> str | None:
    """The file `figure` needs and `run` lacks (a phrase naming it), or None."""
    run = Path(run)
    if figure in ("fig5", "fig6"):
        path = RunPaths(run).analysis_dir / "per_class.csv"
        return None if path.is_file() else f"{path} (run 'eqm analyze {run}')"
    if figure == "curves":
        paths = RunPaths(run)
        if not paths.metrics.is_file():
            return f"{paths.metrics} (written by 'eqm train')"
        if not paths.metric_records(CURVE_KINDS):
            return f"{paths.metrics} holds no step, epoch or eval records"
        return None
    if figure == "roc":
        found = [p for p in _eval_files(run) if _roc_points(_eval_result(p)) is not None]
        wanted = RunPaths(run).eval_dir / "*.json"
        return None if found else f"{wanted} with ROC points (run 'eqm eval')"
    if figure == "sphere":
        path = RunPaths(run).analysis_dir / "features.npz"
        return (
            None
            if path.is_file()
            else f"{path} ('eqm analyze' writes it for 2-D or 3-D embeddings only)"
        )
    raise UserError(f"unknown figure {figure!r}; choose from {', '.join(FIGURES)}")


def _eval_result(path: Path) -> dict[str, Any]:
    """An `eval/<set>.json` result ({} when it vanished since it was listed)."""
    return read_json_object(path) or {}


def _eval_files(run: Path) -> list[Path]:
    folder = RunPaths(Path(run)).eval_dir
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _roc_points(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(FAR, TAR) fractions from an eval/<bench>.json (`roc: {far, tar}`), or None."""
    roc = result.get("roc")
    if not isinstance(roc, dict) or not roc.get("far") or not roc.get("tar"):
        return None
    far = np.asarray(roc["far"], dtype=np.float64)
    tar = np.asarray(roc["tar"], dtype=np.float64)
    return (far, tar) if far.shape == tar.shape else None


def _head_classes(run: Path, override: int | None) -> int:
    if override is not None:
        return override
    return int(_summary(run).get("head_classes", DEFAULT_HEAD_CLASSES))


def _summary(run: Path) -> dict[str, Any]:
    """The run's `analysis/summary.json`, {} when it has none."""
    return read_analysis_summary(RunPaths(Path(run)).analysis_dir) or {}


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    name = "tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"
    cmap = colormaps[name]
    if name == "turbo":
        return [cmap(i / max(n - 1, 1)) for i in range(n)]
    return [cmap(i) for i in range(n)]


# -------------------------------------------------------------------------- fig 5
def _binned(
    sizes: np.ndarray, values: np.ndarray, edges: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class-size bin: geometric-mean size (x), mean and population std of values."""
    xs, means, stds = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (sizes >= lo) & (sizes < hi) & ~np.isnan(values)
        if mask.any():
            xs.append(float(np.exp(np.log(sizes[mask]).mean())))
            means.append(float(values[mask].mean()))
            stds.append(float(values[mask].std()))
    return np.array(xs), np.array(means), np.array(stds)


def _cv_text(values: np.ndarray, few: np.ndarray, head: int, what: str = "") -> str:
    """Coefficient of variation (std / mean) of `values` for classes below / above `head`."""
    parts = [f"CV of {what}" if what else "CV"]
    for name, mask in ((f"<{head} images", few), (f">={head} images", ~few)):
        v = values[mask & ~np.isnan(values)]
        cv = v.std() / v.mean() if v.size and v.mean() > 0 else math.nan
        parts.append(f"{name}: {cv:.3f}" if not math.isnan(cv) else f"{name}: n/a")
    return "\n".join(parts)


def _box_at_top(ax: Axes, sizes: np.ndarray, values: np.ndarray) -> bool:
    """Whether a corner box at the upper right covers fewer points than one at the lower right.

    Counts the points in the right 40 % (log x) of the panel lying in its top / bottom 30 %.
    """
    x0, x1 = (math.log10(v) for v in ax.get_xlim())
    y0, y1 = ax.get_ylim()
    keep = (sizes > 0) & ~np.isnan(values)
    x = (np.log10(sizes[keep]) - x0) / (x1 - x0)
    y = (values[keep] - y0) / (y1 - y0)
    right = x > 0.6
    return int((right & (y > 0.7)).sum()) <= int((right & (y < 0.3)).sum())


def figure_fig5(runs: Sequence[Path], *, head_classes: int | None = None) -> Figure:
    """Paper's Fig. 5: per-class inter-class margin and intra-class scope vs class size.

    Two rows (margin, scope) and one column per run, rows share their y axis. Each panel:
    one point per class (x = training images, log scale; y = angle in degrees), binned
    means ± std, and a vertical line at the head-classes threshold; a box gives the
    coefficient of variation of the classes below / above it.
    """
    names = _labels(runs)
    cv_boxes: list[tuple[Any, str, np.ndarray, np.ndarray]] = []
    fig = _new_figure(5.2 * len(runs) + 2.6, 8.0)
    axes = fig.subplots(2, len(runs), sharey="row", squeeze=False)
    for col, (run, name) in enumerate(zip(runs, names, strict=True)):
        table = PerClassTable.from_csv(RunPaths(Path(run)).analysis_dir / "per_class.csv")
        head = _head_classes(run, head_classes)
        loss = _summary(run).get("loss")
        sizes = table.n_images.astype(np.float64)
        edges = size_bin_edges(table.n_images, head)
        few = table.n_images < head
        rows = [
            (
                axes[0, col],
                "inter-class margin",
                "min angle to another class centre (deg)",
                [("margin", table.margin, "per-class margin")],
            ),
            (
                axes[1, col],
                "intra-class scope",
                "angle between features and own centre (deg)",
                [
                    ("max angle", table.scope_max, "per-class max angle"),
                    ("mean angle", table.scope_mean, "per-class mean angle"),
                ],
            ),
        ]
        for ax, what, ylabel, series in rows:
            for i, (short, values, label) in enumerate(series):
                color = f"C{i}"
                ax.scatter(sizes, values, s=14, alpha=0.5, color=color, label=label, lw=0)
                bx, bm, bs = _binned(sizes, values, edges)
                ax.errorbar(
                    bx,
                    bm,
                    yerr=bs,
                    fmt="o-",
                    color=color,
                    mec="black",
                    mew=0.6,
                    capsize=3,
                    lw=1.6,
                    label=f"binned mean ± std ({short.replace('_', ' ')})",
                )
            ax.axvline(head, color="crimson", ls="--", lw=1.2, label=f"{head} images")
            ax.set_xscale("log")
            ax.set_xlabel("training images per class (log scale)")
            ax.set_ylabel(ylabel)
            title = f"{name}" + (f" ({loss})" if loss else "")
            ax.set_title(f"{title}: {what}")
            ax.grid(True, which="both", alpha=0.25)
            every = np.concatenate([s[1] for s in series])
            cv_text = _cv_text(series[0][1], few, head, series[0][0])
            cv_boxes.append((ax, cv_text, np.tile(sizes, len(series)), every))
            if col == len(runs) - 1:
                ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    for ax, text, sizes, values in cv_boxes:  # after sharey has fixed every row's limits
        top = _box_at_top(ax, sizes, values)
        ax.text(
            0.98,
            0.97 if top else 0.03,
            text,
            transform=ax.transAxes,
            ha="right",
            va="top" if top else "bottom",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.85},
        )
    fig.suptitle("Inter-class margin and intra-class scope vs number of images per class")
    return fig


def _t1_in_legend_order(names: Sequence[str], summaries: Sequence[dict[str, Any]]) -> str:
    """The t1 of the hard/easy split for the title: " = v" when every run used the same
    value, else one "name v" per run in the legend's order; "" when no summary has one."""
    t1s = [(name, s.get("t1")) for name, s in zip(names, summaries, strict=True)
           if s.get("t1") is not None]
    if not t1s:
        return ""
    if len({t for _, t in t1s}) == 1:
        return f" = {t1s[0][1]:g}"
    return ": " + ", ".join(f"{name} {t:g}" for name, t in t1s)


# -------------------------------------------------------------------------- fig 6
def figure_fig6(runs: Sequence[Path], *, head_classes: int | None = None) -> Figure:
    """Paper's Fig. 6: identification accuracy (%) per class-size bin, and hard vs easy.

    Accuracies come from `analysis/test/` (held-out images, `eqm analyze --split test`)
    when present, else from the training-split `analysis/`; the title says which.
    Left: per-class accuracy averaged within each class-size bin, one bar series per run.
    Right: pooled accuracy of hard samples (cos to own centre < t1) and easy samples, for
    classes with fewer / at least head-classes training images, one bar series per run.
    """
    names = _labels(runs)
    folders = [accuracy_analysis_dir(Path(r)) for r in runs]
    tables = [PerClassTable.from_csv(folder / "per_class.csv") for folder in folders]
    summaries = [read_analysis_summary(folder) or {} for folder in folders]
    head = _head_classes(runs[0], head_classes)
    all_sizes = np.concatenate([t.n_images for t in tables])
    edges = size_bin_edges(all_sizes, head)
    bins = [
        (lo, hi)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        if ((all_sizes >= lo) & (all_sizes < hi)).any()
    ]
    fig = _new_figure(max(12.0, 1.2 * len(bins) + 7.0), 5.2)
    ax_bins, ax_hard = fig.subplots(1, 2, width_ratios=[max(len(bins), 2), 4])
    width = 0.8 / len(runs)
    x = np.arange(len(bins))
    for i, (table, name) in enumerate(zip(tables, names, strict=True)):
        acc = []
        for lo, hi in bins:
            mask = (table.n_images >= lo) & (table.n_images < hi)
            acc.append(100.0 * table.accuracy[mask].mean() if mask.any() else np.nan)
        ax_bins.bar(x + (i - (len(runs) - 1) / 2) * width, acc, width, label=name)
    ax_bins.set_xticks(x, [f"{lo}-{hi - 1}" for lo, hi in bins], rotation=30, ha="right")
    split_at = sum(1 for lo, _ in bins if lo < head)
    if 0 < split_at < len(bins):
        ax_bins.axvline(split_at - 0.5, color="crimson", ls="--", lw=1.2, label=f"{head} images")
    ax_bins.set_xlabel("training images per class (bin)")
    ax_bins.set_ylabel("identification accuracy (%)")
    ax_bins.set_ylim(0, 105)
    ax_bins.set_title("Accuracy per class-size bin\n(mean over the classes of each bin)")
    ax_bins.grid(True, axis="y", alpha=0.3)

    cats = [
        (f"<{head}: hard", "few", "hard"),
        (f"<{head}: easy", "few", "easy"),
        (f">={head}: hard", "many", "hard"),
        (f">={head}: easy", "many", "easy"),
    ]
    xc = np.arange(len(cats))
    for i, (table, name) in enumerate(zip(tables, names, strict=True)):
        few = table.n_images < head
        values, counts = [], []
        for _label, group, kind in cats:
            mask = few if group == "few" else ~few
            total = int(getattr(table, f"{kind}_count")[mask].sum())
            ok = int(getattr(table, f"{kind}_correct")[mask].sum())
            values.append(100.0 * ok / total if total else np.nan)
            counts.append(total)
        bars = ax_hard.bar(xc + (i - (len(runs) - 1) / 2) * width, values, width, label=name)
        ax_hard.bar_label(bars, labels=[f"n={c}" for c in counts], fontsize=6, padding=1)
    t1_text = _t1_in_legend_order(names, summaries)
    ax_hard.set_xticks(xc, [c[0] for c in cats], rotation=30, ha="right")
    ax_hard.set_xlabel("class group (training images): samples")
    ax_hard.set_ylabel("identification accuracy (%)")
    ax_hard.set_ylim(0, 110)
    ax_hard.set_title(f"Hard vs easy samples\n(hard: cos to own centre < t1{t1_text})")
    ax_hard.grid(True, axis="y", alpha=0.3)
    handles, labels = ax_bins.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9)
    split = {s.get("split") for s in summaries if s.get("split")}
    suffix = f" ({', '.join(sorted(split))} split)" if split else ""
    fig.suptitle(f"Closed-set identification accuracy by class size{suffix}")
    return fig


# ------------------------------------------------------------------------- curves
def figure_curves(runs: Sequence[Path]) -> Figure:
    """Training loss vs step and verification accuracy (%) vs epoch, runs overlaid.

    The accuracy panel is drawn only when some run has `eval` records; one line per
    (run, benchmark).
    """
    names = _labels(runs)
    records = [RunPaths(Path(r)).metric_records(CURVE_KINDS) for r in runs]
    has_eval = any(rec.get("kind") == "eval" for recs in records for rec in recs)
    fig = _new_figure(12.0 if has_eval else 6.5, 4.4)
    axes = fig.subplots(1, 2 if has_eval else 1, squeeze=False)[0]
    ax_loss = axes[0]
    for i, (recs, name) in enumerate(zip(records, names, strict=True)):
        steps = [r for r in recs if r.get("kind") == "step" and r.get("loss") is not None]
        epochs = [r for r in recs if r.get("kind") == "epoch" and r.get("loss") is not None]
        color = f"C{i}"
        if steps:
            ax_loss.plot(
                [r["step"] for r in steps],
                [r["loss"] for r in steps],
                color=color,
                lw=1.2,
                label=f"{name} (logged steps)",
            )
        if epochs:
            ax_loss.plot(
                [r["step"] for r in epochs],
                [r["loss"] for r in epochs],
                "o--",
                color=color,
                ms=4,
                lw=1.0,
                label=f"{name} (epoch mean)",
            )
    ax_loss.set_xlabel("training step (iterations)")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("Training loss")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend(fontsize=8)
    if has_eval:
        from matplotlib.ticker import MaxNLocator

        ax_acc = axes[1]
        styles = ["-", "--", ":", "-."]
        for i, (recs, name) in enumerate(zip(records, names, strict=True)):
            evals = [r for r in recs if r.get("kind") == "eval" and r.get("accuracy") is not None]
            benches = sorted({str(r.get("benchmark", "eval")) for r in evals})
            for j, bench in enumerate(benches):
                rows = [r for r in evals if str(r.get("benchmark", "eval")) == bench]
                ax_acc.plot(
                    [r["epoch"] for r in rows],
                    [100.0 * r["accuracy"] for r in rows],
                    marker="o",
                    ls=styles[j % len(styles)],
                    color=f"C{i}",
                    ms=4,
                    label=f"{name}: {bench}",
                )
        ax_acc.set_xlabel("epoch")
        ax_acc.set_xlim(left=0)  # whole epochs from 0, even with a single evaluation
        ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_acc.set_ylabel("verification accuracy (%)")
        ax_acc.set_title("Verification accuracy (10-fold)")
        ax_acc.grid(True, alpha=0.3)
        ax_acc.legend(fontsize=8)
    fig.suptitle("Training curves")
    return fig


# ---------------------------------------------------------------------------- roc
def _roc_legend(result: dict[str, Any]) -> str:
    """The numbers beside a run's name in a ROC legend: accuracy (or TAR@1e-4) and AUC."""
    acc, auc = result.get("accuracy"), result.get("auc")
    tar = (result.get("tar_at_far") or {}).get("1e-04")
    parts = [
        f"acc {100 * acc:.2f}%" if acc is not None else "",
        f"TAR@FAR=1e-4 {100 * tar:.2f}%" if acc is None and tar is not None else "",
        f"AUC {auc:.4f}" if auc is not None else "",
    ]
    return ", ".join(part for part in parts if part)


#: Fewest mismatched pairs for a drawable ROC: with fewer, the lowest non-zero FAR is
#: above 0.1 and the log-FAR axis shows a step or two, not a curve.
MIN_ROC_NEGATIVES = 10


def _negatives(result: dict[str, Any], far: np.ndarray) -> int:
    """The number of mismatched pairs behind a ROC: the file's count, else 1 / smallest FAR."""
    count = result.get("negatives")
    if isinstance(count, int):
        return count
    positive = far[far > 0]
    return int(round(1.0 / positive.min())) if positive.size else 0


def roc_degenerate(result: dict[str, Any]) -> str | None:
    """Why the ROC of an eval result cannot be drawn as a curve (a phrase), or None."""
    points = _roc_points(result)
    if points is None:
        return "it holds no ROC points"
    far, _ = points
    negatives = _negatives(result, far)
    if negatives < MIN_ROC_NEGATIVES:
        return (
            f"it rests on {negatives} mismatched pairs (at least {MIN_ROC_NEGATIVES} are "
            "needed for a curve on a log FAR axis)"
        )
    if not ((far > 0) & (far < 1)).any():
        return "it has no point with 0 < FAR < 1 (every score tied)"
    return None


@dataclass
class RocSelection:
    """The ROC curves to draw per set: (run label, run index, result); and the sets skipped."""

    curves: dict[str, list[tuple[str, int, dict[str, Any]]]]
    skipped: list[str]


def select_rocs(runs: Sequence[Path], sets: Sequence[str] | None = None) -> RocSelection:
    """Every run's `eval/*.json` with ROC points, limited to `sets` when given.

    A result whose ROC is degenerate (`roc_degenerate`) is left out with a note; a set
    named in `sets` that no run has evaluated is a `UserError` listing the sets there are.
    """
    names = _labels(runs)
    found: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
    for i, (run, name) in enumerate(zip(runs, names, strict=True)):
        for path in _eval_files(run):
            result = _eval_result(path)
            if _roc_points(result) is not None:
                found.setdefault(str(result.get("benchmark") or path.stem), []).append(
                    (name, i, result)
                )
    wanted = list(dict.fromkeys(sets)) if sets else sorted(found)
    unknown = [name for name in wanted if name not in found]
    if unknown:
        have = ", ".join(sorted(found)) or "none"
        raise UserError(
            f"no run has ROC points for the set {shown(unknown[0])} (eval/<set>.json); "
            f"sets with ROC points: {have}"
        )
    selection = RocSelection(curves={}, skipped=[])
    for bench in wanted:
        for name, i, result in found[bench]:
            why = roc_degenerate(result)
            if why is None:
                selection.curves.setdefault(bench, []).append((name, i, result))
            else:
                selection.skipped.append(f"roc: skipped set '{bench}' of run {name}: {why}")
    return selection


def figure_roc(runs: Sequence[Path], sets: Sequence[str] | None = None) -> Figure:
    """ROC curves (TAR % vs FAR, log FAR axis) from `eval/*.json`: one panel per set.

    `sets` chooses the sets (default: every set with ROC points); degenerate ROCs are
    left out (see `select_rocs`).
    """
    return draw_roc(select_rocs(runs, sets))


def draw_roc(selection: RocSelection) -> Figure:
    """The ROC figure of the selected curves (a `UserError` when none is drawable)."""
    curves = selection.curves
    benches = list(curves)
    if not benches:
        reason = f" ({selection.skipped[0]})" if selection.skipped else ""
        raise UserError(
            f"no eval/*.json file of these runs holds a drawable ROC; run 'eqm eval'{reason}"
        )
    fig = _new_figure(5.2 * len(benches) + 0.4, 4.6)
    axes = fig.subplots(1, len(benches), squeeze=False, sharey=True)[0]
    for ax, bench in zip(axes, benches, strict=True):
        low = 1.0
        for name, i, result in curves[bench]:
            far, tar = _roc_points(result)  # type: ignore[misc]
            keep = far > 0
            low = min(low, float(far[keep].min()) if keep.any() else 1.0)
            extra = _roc_legend(result)
            ax.plot(
                far[keep],
                100.0 * tar[keep],
                color=f"C{i}",
                lw=1.5,
                label=f"{name}" + (f" ({extra})" if extra else ""),
            )
        ax.set_xscale("log")
        ax.set_xlim(max(low, 1e-6), 1.0)
        ax.set_ylim(0, 101)
        ax.set_xlabel("false accept rate FAR (log scale)")
        ax.set_ylabel("true accept rate TAR (%)")
        ax.set_title(f"ROC: {bench}")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Verification ROC")
    return fig


# ------------------------------------------------------------------------- sphere
MAX_LEGEND_CLASSES = 20


def _class_points(
    ax: Any,
    emb: np.ndarray,
    labels: np.ndarray,
    sizes: np.ndarray,
    colors: list[Any],
    c: int,
    **style: Any,
) -> None:
    """Class ``c``'s embeddings (2-D or 3-D rows) as points in its colour, labelled with its
    training-image count; ``style`` adds matplotlib scatter options (marker size ``s``)."""
    mask = labels == c
    ax.scatter(
        *emb[mask].T, alpha=0.6, color=colors[c], label=f"class {c} (n={int(sizes[c])})", **style
    )


def _draw_sphere_2d(
    ax: Axes,
    emb: np.ndarray,
    labels: np.ndarray,
    centers: np.ndarray,
    sizes: np.ndarray,
    colors: list[Any],
) -> None:
    t = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(t), np.sin(t), color="0.6", lw=0.8, zorder=0)
    for c in range(centers.shape[0]):
        _class_points(ax, emb, labels, sizes, colors, c, s=10, lw=0)
        ax.annotate(
            "",
            xy=(1.12 * centers[c, 0], 1.12 * centers[c, 1]),
            xytext=(0, 0),
            arrowprops={"arrowstyle": "->", "color": colors[c], "lw": 1.8},
        )
    ax.set_aspect("equal")
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_xlabel("feature dim 1 (unit-normalized)")
    ax.set_ylabel("feature dim 2 (unit-normalized)")


def _draw_sphere_3d(
    ax: Any,
    emb: np.ndarray,
    labels: np.ndarray,
    centers: np.ndarray,
    sizes: np.ndarray,
    colors: list[Any],
) -> None:
    u, v = np.mgrid[0 : 2 * np.pi : 25j, 0 : np.pi : 13j]
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.8", lw=0.4)
    for c in range(centers.shape[0]):
        _class_points(ax, emb, labels, sizes, colors, c, s=8)
        tip = 1.15 * centers[c]
        ax.plot([0, tip[0]], [0, tip[1]], [0, tip[2]], color=colors[c], lw=2)
    ticks = [-1.0, -0.5, 0.0, 0.5, 1.0]  # the default 0.25 steps overlap on small axes
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_zticks(ticks)
    ax.set_xlabel("dim 1")
    ax.set_ylabel("dim 2")
    ax.set_zlabel("dim 3")
    ax.set_box_aspect((1, 1, 1))


def figure_sphere(runs: Sequence[Path]) -> Figure:
    """Paper's Fig. 1: unit features (points) and class centres (arrows) on the circle (2-D)
    or sphere (3-D), coloured by class, with each class's training size in the legend."""
    names = _labels(runs)
    fig = _new_figure(5.6 * len(runs) + 1.8, 5.6)
    for col, (run, name) in enumerate(zip(runs, names, strict=True)):
        path = RunPaths(Path(run)).analysis_dir / "features.npz"
        with np.load(path) as data:
            emb, labels = data["embeddings"], data["labels"]
            centers, sizes = data["centers"], data["class_sizes"]
        dim = centers.shape[1]
        if dim not in (2, 3):
            raise UserError(f"{path} holds {dim}-D features; the sphere figure needs 2 or 3")
        colors = _colors(centers.shape[0])
        if dim == 2:
            ax = fig.add_subplot(1, len(runs), col + 1)
            _draw_sphere_2d(ax, emb, labels, centers, sizes, colors)
        else:
            ax = fig.add_subplot(1, len(runs), col + 1, projection="3d")
            _draw_sphere_3d(ax, emb, labels, centers, sizes, colors)
        loss = _summary(run).get("loss")
        ax.set_title(f"{name}" + (f" ({loss})" if loss else "") + f": {dim}-D features")
        if centers.shape[0] <= MAX_LEGEND_CLASSES:
            ax.legend(
                fontsize=7,
                loc="center left",
                bbox_to_anchor=(1.08 if dim == 3 else 1.02, 0.5),
                title="class (training images)",
                title_fontsize=7,
                markerscale=1.5,
            )
        else:
            ax.text(
                0.01,
                0.01,
                f"{centers.shape[0]} classes (too many for a legend)",
                transform=ax.transAxes,
                fontsize=7,
                color="0.3",
            )
    fig.suptitle("Features (dots) and class centres (arrows) on the unit hypersphere")
    return fig


# ------------------------------------------------------------------------ driver
FIGURE_FUNCTIONS: dict[str, Callable[[Sequence[Path]], Figure]] = {
    "fig5": figure_fig5,
    "fig6": figure_fig6,
    "curves": figure_curves,
    "roc": figure_roc,
    "sphere": figure_sphere,
}


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `stem.png` (150 dpi) and `stem.pdf` into `out_dir` (each through a temporary
    sibling, renamed into place); returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        kind = path.suffix[1:]
        atomic_write(path, lambda out, k=kind: fig.savefig(out, dpi=DPI, format=k), sync=False)
    return paths


@dataclass
class PlotReport:
    """Files written per figure, and a one-line note per figure skipped."""

    written: dict[str, list[Path]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    out_dir: Path | None = None


def make_figures(
    runs: Sequence[str | Path],
    figures: Sequence[str] | None = None,
    out: str | Path | None = None,
    *,
    sets: Sequence[str] | None = None,
) -> PlotReport:
    """Draw `figures` (default: every figure the runs' files allow) for one or more runs.

    Output: `out`, else the first run's `figures/`. With one run the files are `<figure>.png`
    / `.pdf`; with several, `<figure>-<run1>-vs-<run2>....png`. A figure asked for
    explicitly whose input file is missing is a `UserError` naming that file; a default one
    is skipped with a note. `sets` limits the ROC figure to those evaluation sets; sets
    whose ROC is degenerate are skipped with a note.
    """
    paths = [Path(r) for r in runs]
    if not paths:
        raise UserError("give at least one run directory")
    for run in paths:
        if not run.is_dir():
            raise UserError(f"run directory not found: {run}")
    explicit = figures is not None and len(figures) > 0
    wanted = list(dict.fromkeys(figures)) if explicit else list(FIGURES)  # type: ignore[arg-type]
    for name in wanted:
        if name not in FIGURE_FUNCTIONS:
            raise UserError(f"unknown figure {name!r}; choose from {', '.join(FIGURES)}")
    if sets and "roc" not in wanted:
        raise UserError("--sets chooses the sets of the roc figure; add --figure roc")
    out_dir = Path(out) if out is not None else RunPaths(paths[0]).figures_dir
    names = _labels(paths)
    suffix = "" if len(paths) == 1 else "-" + "-vs-".join(n.replace("/", "_") for n in names)
    report = PlotReport(out_dir=out_dir)
    for name in wanted:
        missing = [m for m in (_missing(name, run) for run in paths) if m]
        if missing:
            if explicit:
                raise UserError(f"cannot draw {name}: missing {missing[0]}")
            report.skipped.append(f"{name}: skipped, missing {missing[0]}")
            continue
        if name == "roc":
            selection = select_rocs(paths, sets)
            report.skipped.extend(selection.skipped)
            if not selection.curves and not explicit:
                report.skipped.append("roc: skipped, no set has a drawable ROC")
                continue
            fig = draw_roc(selection)
        else:
            fig = FIGURE_FUNCTIONS[name](paths)
        report.written[name] = save_figure(fig, out_dir, f"{name}{suffix}")
    return report
