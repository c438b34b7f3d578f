"""Rich tables of `eqm sweep` and `eqm compare` (percentages for fractions)."""

from __future__ import annotations

from rich import box
from rich.table import Table

from eqmcli.experiments.compare import CompareReport, Comparison
from eqmcli.experiments.results import is_fraction
from eqmcli.experiments.sweep import MetricStats, SweepResult

TABLE_METRICS = (
    "accuracy",
    "tar@far=1e-03",
    "closed_accuracy_few",
    "closed_accuracy_many",
    "margin_cv_all",
    "scope_cv_all",
)
HEADERS = {
    "accuracy": "verif. acc %",
    "tar@far=1e-03": "TAR@FAR=1e-3 %",
    "closed_accuracy_few": "closed acc few %",
    "closed_accuracy_many": "closed acc many %",
    "margin_cv_all": "margin CV",
    "scope_cv_all": "scope CV",
}


def metric_header(metric: str) -> str:
    """A column header (with % for fractions)."""
    return HEADERS.get(metric, f"{metric} %" if is_fraction(metric) else metric)


def format_value(metric: str, value: float | None, digits: int | None = None) -> str:
    """A value of `metric` for the screen: percent with 2 decimals, else 3 decimals."""
    if value is None:
        return "-"
    if is_fraction(metric):
        return f"{100 * value:.{2 if digits is None else digits}f}"
    return f"{value:.{3 if digits is None else digits}f}"


def format_stats(metric: str, stats: MetricStats | None, *, stacked: bool = False) -> str:
    """`mean ± std` (just the mean for one value); '-' when there is none. ``stacked``
    puts `± std` on a second line (narrow columns then never split a number)."""
    if stats is None:
        return "-"
    if stats.std is None:
        return format_value(metric, stats.mean)
    spread = f"± {format_value(metric, stats.std)}"
    return f"{format_value(metric, stats.mean)}{chr(10) if stacked else ' '}{spread}"


def shown_metrics(available: set[str], extra: tuple[str, ...] = ()) -> list[str]:
    """The table metrics present in `available`, then `extra` ones not yet listed."""
    chosen = [m for m in TABLE_METRICS if m in available]
    return chosen + [m for m in extra if m not in chosen]


def sweep_table(result: SweepResult) -> Table:
    """One row per config: its swept values, finished seeds, metrics as mean ± std."""
    options = result.options
    keys = [axis.key for axis in options.axes]
    short = result.to_dict()["short_keys"]
    available = {m for c in result.configs for m in c.metrics}
    metrics = shown_metrics(available)
    table = Table(
        title=f"sweep {options.out}: {len(result.configs)} configs x {options.seeds} seeds",
        caption="mean ± sample std over finished seeds; verification = the run's first "
        "eval set; closed-set accuracy and CVs after --analyze (few: < "
        f"{options.head_classes} training images)",
        box=box.SIMPLE_HEAD,
    )
    for key in keys:
        table.add_column(short[key])
    table.add_column("runs", justify="right")
    for metric in metrics:
        table.add_column(metric_header(metric), justify="right")
    for config in result.configs:
        cells = [str(config.assignments[key]) for key in keys]
        cells.append(f"{len(config.runs)}/{options.seeds}")
        cells += [format_stats(m, config.metrics.get(m)) for m in metrics]
        table.add_row(*cells)
    return table


def group_labels(report: CompareReport) -> dict[str, str]:
    """A short label per group name (A, B, ... then G27, G28, ...): the table stays 80
    columns wide however long the paths are; `compare_legend` says what each stands for."""
    return {g.name: chr(ord("A") + i) if i < 26 else f"G{i + 1}"
            for i, g in enumerate(report.groups)}


def checkpoint_text(checkpoints: list[str | None]) -> str:
    """Which checkpoint a group's numbers come from: one run's (name and SHA-256 prefix),
    or the file name every run of a sweep config shares."""
    known = [c for c in checkpoints if c]
    if not known:
        return "checkpoint not recorded"
    if len(checkpoints) == 1:
        return f"checkpoint {known[0]}"
    names = sorted({c.split()[0] for c in known})
    return f"checkpoint {', '.join(names)} of each run"


def compare_table(report: CompareReport) -> Table:
    """One row per group (by its `group_labels` label): runs and metrics as the mean over
    ± the std below it, so that six metrics fit in 80 columns."""
    available = {m for g in report.groups for m in g.metrics}
    metrics = shown_metrics(available, (report.metric,))
    labels = group_labels(report)
    table = Table(title="runs compared", box=box.SIMPLE_HEAD, padding=(0, 1),
                  caption="mean ± sample std over runs (seeds)")
    table.add_column("group", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)
    for metric in metrics:
        table.add_column(metric_header(metric), justify="right")
    for group in report.groups:
        cells = [labels[group.name], str(len(group.runs))]
        table.add_row(*cells, *(format_stats(m, group.stats(m), stacked=True) for m in metrics))
    return table


def compare_legend(report: CompareReport) -> list[str]:
    """One line per group: its label, path and the checkpoint its numbers come from."""
    labels = group_labels(report)
    return [f"{labels[g.name]} = {g.name} ({checkpoint_text(g.checkpoints)})"
            for g in report.groups]


def describe_comparison(comparison: Comparison, labels: dict[str, str] | None = None) -> str:
    """One or two sentences: the difference and its test (percentage points for fractions);
    groups named by ``labels`` when given."""
    a, b = (labels or {}).get(comparison.a, comparison.a), (labels or {}).get(
        comparison.b, comparison.b)
    metric, head = comparison.metric, f"{b} vs {a} ({comparison.metric})"
    unit = " pp" if is_fraction(metric) else ""
    if comparison.welch is not None:
        w = comparison.welch
        text = f"{head}: difference {format_value(metric, w.difference)}{unit}"
        if w.p_value is None:
            return f"{text}; {comparison.note}"
        return (f"{text}, {100 * w.confidence:.0f}% CI [{format_value(metric, w.low)}, "
                f"{format_value(metric, w.high)}]{unit}, p = {w.p_value:.3g} "
                f"({w.test}; df = {w.df:.1f})")
    if comparison.mcnemar is not None:
        m = comparison.mcnemar
        return (f"{head}: on {m.pairs} {m.benchmark} pairs, {m.only_b} right only by "
                f"{b}, {m.only_a} only by {a}; p = {m.p_value:.3g} ({m.test})")
    return f"{head}: no test: {comparison.note}"
