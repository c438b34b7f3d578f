"""`eqm compare`: runs and sweep configs side by side, and whether a difference is real.

Each argument is a run directory (a group of one run: its `checkpoints/last.pt`'s
results), one checkpoint of a run (`RUN/checkpoints/best.pt`: the results `eqm eval` wrote
for it in `RUN/eval/best/`) or a sweep folder (`sweep.json`; one group per config, its
finished seeds as runs). Every group after the first is
compared with the first on one metric (default `accuracy`, the verification accuracy of
the runs' first eval set; names in `eqmcli.experiments.results`):

- both groups with at least two runs (seeds): the difference of the means (group minus
  first) with a 95% confidence interval and a two-sided p-value from **Welch's t-test**
  (unequal variances, Welch-Satterthwaite degrees of freedom) over the runs;
- both single runs and a verification accuracy: **McNemar's exact test** on the
  per-pair correctness on the same pairs (`eval/<set>.pairs.npz`): the two-sided
  binomial test of the discordant pairs (one model right, the other wrong) at p = 1/2;
- anything else: no test, and the note says why.

A verification metric is only tested when every run on both sides was verified on the same
pairs: the `pairs_fingerprint` their result files record (the pair list and its images'
contents; for the synthetic set its data parameters) must agree, else the note says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eqmcli.errors import UserError, shown
from eqmcli.evaluation.pair_outcomes import pair_correctness
from eqmcli.experiments.results import VERIFICATION_KEYS, RunResults, read_run_results
from eqmcli.experiments.sweep import SWEEP_FILE, MetricStats, metric_stats, require_sweep_file
from eqmcli.run.rundir import CHECKPOINT_DIR

CONFIDENCE = 0.95
WELCH = "Welch's t-test (unequal variances), two-sided, over runs"
MCNEMAR = "McNemar's exact test (two-sided binomial on the discordant pairs)"


@dataclass
class Group:
    """Runs compared as one: a run directory, or one config of a sweep."""

    name: str
    runs: list[Path]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    primary_sets: list[str | None] = field(default_factory=list)
    #: per run, the checkpoint its results come from (`run_checkpoint`)
    checkpoints: list[str | None] = field(default_factory=list)
    #: per run, each verification set's pair fingerprint (None: not recorded)
    fingerprints: list[dict[str, str | None]] = field(default_factory=list)
    #: per run, the folder its verification results were read from
    results: list[Path] = field(default_factory=list)

    def stats(self, metric: str) -> MetricStats | None:
        values = self.metrics.get(metric, [])
        return metric_stats(values) if values else None


@dataclass
class WelchResult:
    """Mean of b minus mean of a, its confidence interval, t, df and p (fractions as stored)."""

    difference: float
    low: float
    high: float
    t: float | None
    df: float | None
    p_value: float | None
    confidence: float = CONFIDENCE
    test: str = WELCH


@dataclass
class McNemarResult:
    """Per-pair 2x2 table of two runs on one set and the exact p-value."""

    benchmark: str
    pairs: int
    both_correct: int
    only_a: int
    only_b: int
    both_wrong: int
    p_value: float
    test: str = MCNEMAR


@dataclass
class Comparison:
    """Group `b` against group `a` on `metric`."""

    a: str
    b: str
    metric: str
    welch: WelchResult | None = None
    mcnemar: McNemarResult | None = None
    note: str = ""


@dataclass
class CompareReport:
    """The groups and the comparisons of each with the first."""

    metric: str
    groups: list[Group]
    comparisons: list[Comparison]

    def to_dict(self) -> dict[str, Any]:
        """The `--json` layout (fractions in [0, 1])."""
        return {
            "metric": self.metric,
            "groups": [
                {"name": g.name, "runs": [str(r) for r in g.runs], "checkpoints": g.checkpoints,
                 "metrics": {m: asdict(g.stats(m)) for m in sorted(g.metrics)}}
                for g in self.groups
            ],
            "comparisons": [asdict(c) for c in self.comparisons],
        }


def welch_interval(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> WelchResult:
    """Welch's t-test and confidence interval for mean(b) - mean(a); each needs >= 2 values."""
    return welch_contrast([(-1.0, a), (1.0, b)], confidence)


def welch_contrast(
    groups: list[tuple[float, list[float]]], confidence: float = CONFIDENCE
) -> WelchResult:
    """Welch's t-test and confidence interval for Σ c_i · mean(values_i) over independent
    groups `(c_i, values_i)` (each >= 2 values): variance Σ c_i² var_i / n_i,
    Welch-Satterthwaite degrees of freedom. Two groups (-1, a), (1, b) give Welch's test."""
    arrays = [(c, np.asarray(v, dtype=np.float64)) for c, v in groups]
    if any(x.size < 2 for _, x in arrays):
        raise ValueError("Welch's t-test needs at least two values in each group")
    return welch_contrast_of_moments(
        [(c, float(x.mean()), float(x.var(ddof=1)), x.size) for c, x in arrays], confidence)


def welch_contrast_of_moments(
    groups: list[tuple[float, float, float, int]], confidence: float = CONFIDENCE
) -> WelchResult:
    """`welch_contrast` from each group's summary `(c_i, mean_i, var_i, n_i)` (sample
    variance, ddof 1; n_i >= 2): what a table of means and spreads is enough to re-check."""
    from scipy import stats

    difference = float(sum(c * mean for c, mean, _, _ in groups))
    parts = [(c * c * var / n, n) for c, _, var, n in groups]
    se = math.sqrt(sum(v for v, _ in parts))
    if se == 0.0:
        return WelchResult(difference, difference, difference, None, None, None, confidence)
    df = se**4 / sum(v**2 / (n - 1) for v, n in parts)
    t = difference / se
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * stats.t.sf(abs(t), df))
    return WelchResult(difference, difference - half, difference + half, t, df, p, confidence)


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given): the k-th
    smallest becomes max over j <= k of min(1, (m - j + 1) · p_(j)); controls the
    family-wise error rate at any level without assumptions about dependence."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: 2 P(X <= min) for X ~ Binomial(only_a + only_b, 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar_runs(results_a: Path, results_b: Path, benchmark: str) -> McNemarResult:
    """McNemar's exact test of two models on the pairs of `benchmark` (the same pairs), from
    their results folders (`RUN/eval/`, `RUN/eval/best/`, ...)."""
    correct_a, issame_a = pair_correctness(results_a, benchmark)
    correct_b, issame_b = pair_correctness(results_b, benchmark)
    if issame_a.shape != issame_b.shape or not np.array_equal(issame_a, issame_b):
        raise UserError(
            f"{results_a} and {results_b} were not verified on the same {benchmark} pairs")
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    return McNemarResult(
        benchmark=benchmark, pairs=int(correct_a.size),
        both_correct=int(np.sum(correct_a & correct_b)), only_a=only_a, only_b=only_b,
        both_wrong=int(np.sum(~correct_a & ~correct_b)), p_value=mcnemar_exact(only_a, only_b),
    )


# ------------------------------------------------------------------------ groups
def run_checkpoint(results: RunResults) -> str | None:
    """The checkpoint all of a run's result files come from: its file name, with the first
    12 hex digits of its SHA-256 where recorded (None when no file names one). Files from
    different checkpoints (another name, or the same name with other contents) are a
    `UserError`: their numbers side by side would describe no single model."""
    recorded = results.checkpoints
    names = {Path(path).name for path, _ in recorded.values()}
    digests = {sha for _, sha in recorded.values() if sha}
    if len(names) > 1 or len(digests) > 1:
        listing = "; ".join(
            f"{file} from {path}" + (f" (sha256 {sha[:12]})" if sha else "")
            for file, (path, sha) in sorted(recorded.items()))
        raise UserError(
            f"{results.run_dir} holds results of different checkpoints ({listing}): re-run "
            "'eqm eval' and 'eqm analyze' on one checkpoint before comparing"
        )
    if not names:
        return None
    return names.pop() + (f" {digests.pop()[:12]}" if digests else "")


def _add_run(group: Group, run_dir: Path, checkpoint: str | None = None) -> None:
    results = read_run_results(run_dir, checkpoint)
    group.results.append(results.results_dir)
    group.checkpoints.append(run_checkpoint(results))
    group.runs.append(run_dir)
    group.primary_sets.append(results.primary_set)
    group.fingerprints.append(results.fingerprints)
    for name, value in results.metrics.items():
        group.metrics.setdefault(name, []).append(value)


def load_groups(paths: list[Path]) -> list[Group]:
    """One group per run directory or checkpoint, one per config of each sweep folder."""
    groups: list[Group] = []
    for path in paths:
        sweep_file = path / SWEEP_FILE
        if path.is_file() or not sweep_file.is_file():
            group = Group(name=str(path), runs=[])
            if path.is_file() and path.parent.name != CHECKPOINT_DIR:
                raise UserError(f"{path} is a file but not a checkpoint of a run "
                                "(RUN/checkpoints/NAME.pt): give a run, checkpoint or sweep")
            if path.is_file():
                _add_run(group, path.parent.parent, path.name)
            else:
                _add_run(group, path)
            groups.append(group)
            continue
        configs: dict[str, Group] = {}
        for member in require_sweep_file(path, ("members",))["members"]:
            label = str(member.get("config") or "base")
            group = configs.setdefault(label, Group(name=f"{path}:{label}", runs=[]))
            if member.get("status") in ("done", "skipped"):
                _add_run(group, path / member["name"])
        groups.extend(configs.values())
    if not groups:
        raise UserError("give at least one run directory or sweep folder")
    return groups


def is_verification_metric(metric: str) -> bool:
    """True for a metric read from a verification result file (`accuracy`, `lfw/auc`, ...)."""
    tail = metric.rpartition("/")[2]
    return tail in VERIFICATION_KEYS or tail.startswith("tar@far=")


def verification_set(metric: str, primary: str | None) -> str | None:
    """The verification set whose result file holds `metric` (None: not such a metric)."""
    if not is_verification_metric(metric):
        return None
    return metric.rpartition("/")[0] or primary


def pairs_mismatch(a: Group, b: Group, metric: str) -> str | None:
    """Why the runs of `a` and `b` may not be compared on `metric`: not every one recorded
    the same pair fingerprint for the set it comes from. None: they may (or it is not a
    verification metric)."""
    seen: dict[str, str] = {}  # fingerprint -> "set of group"
    for group in (a, b):
        for folder, primary, prints in zip(group.results, group.primary_sets,
                                           group.fingerprints, strict=True):
            vset = verification_set(metric, primary)
            if vset is None or vset not in prints:
                continue
            if prints[vset] is None:
                return (f"{folder / vset}.json records no pair fingerprint (it was written "
                        "before this version), so nothing shows that both sides were verified "
                        "on the same pairs: re-run 'eqm eval' on its model")
            seen.setdefault(prints[vset], f"{vset} of {group.name}")
    if len(seen) > 1:
        first, second = list(seen.values())[:2]
        return (f"the runs were not verified on the same pairs ({first} and {second} differ "
                "in their pairs or images): re-run 'eqm eval' on one set for both sides")
    return None


def _missing(metric: str, group: Group) -> str:
    """Why `metric` has no value in `group`, and which verification sets it does have."""
    text = f"{metric} is missing in {group.name}"
    sets = sorted({name.rpartition("/")[0] for name in group.metrics if "/" in name})
    if sets and is_verification_metric(metric):
        tail = metric.rpartition("/")[2]
        text += f" (it has results for {', '.join(sets)}: pass --metric {sets[0]}/{tail})"
    return text


def _benchmark_of(metric: str, group: Group) -> str | None:
    """The verification set whose per-pair correctness `metric` summarizes, if any."""
    name, _, tail = metric.rpartition("/")
    if tail != "accuracy":
        return None
    return name or group.primary_sets[0]


def compare_pair(a: Group, b: Group, metric: str) -> Comparison:
    """Welch over runs, McNemar for two single runs, or a note saying why there is no test."""
    found = Comparison(a=a.name, b=b.name, metric=metric)
    va, vb = a.metrics.get(metric, []), b.metrics.get(metric, [])
    mismatch = pairs_mismatch(a, b, metric)
    if not va or not vb:
        found.note = _missing(metric, a if not va else b)
    elif mismatch:
        found.note = mismatch
    elif len(va) >= 2 and len(vb) >= 2:
        found.welch = welch_interval(va, vb)
        if found.welch.p_value is None:
            found.note = "no spread over the runs: no interval"
    elif len(a.runs) == 1 and len(b.runs) == 1 and _benchmark_of(metric, a):
        try:
            found.mcnemar = mcnemar_runs(a.results[0], b.results[0], _benchmark_of(metric, a))
        except UserError as error:
            found.note = str(error)
    else:
        found.note = ("a confidence interval needs at least two runs (seeds) on each side; "
                      "McNemar's test needs one run each and a verification accuracy")
    return found


def compare(paths: list[Path], metric: str = "accuracy") -> CompareReport:
    """Load the groups and compare each after the first with the first on `metric`."""
    groups = load_groups(paths)
    if not any(metric in g.metrics for g in groups):
        known = sorted({m for g in groups for m in g.metrics})
        raise UserError(
            f"no run has the metric {shown(metric)}; available: {', '.join(known[:20])}"
        )
    comparisons = [compare_pair(groups[0], other, metric) for other in groups[1:]]
    return CompareReport(metric=metric, groups=groups, comparisons=comparisons)
