"""A run's final results as one flat set of named numbers (what sweep and compare tabulate).

Names (fractions in [0, 1], angles in degrees, CV = std / mean over classes):

- from `eval/<set>.json` (the last verification of each set): `<set>/accuracy`,
  `<set>/accuracy_std` (over the 10 folds), `<set>/tar@far=1e-03`, `<set>/tar@far=1e-04`,
  `<set>/auc`, `<set>/eer`; the run's primary set (the first of its `eval.sets`, the one
  that picks `best.pt`; for a run verified only after training, its one set) also
  without the prefix: `accuracy`, `tar@far=1e-03`, ...;
- from `analysis/test/summary.json` (`eqm analyze --split test`): closed-set
  identification accuracy `closed_accuracy_all`, `_few`, `_many` (classes with fewer /
  at least `head_classes` training images; mean of per-class accuracies);
- from `analysis/summary.json` (`eqm analyze`): `margin_cv_all/_few/_many`,
  `scope_cv_all/_few/_many` (scope = max angle to the class centre), `margin_mean_all`,
  `scope_mean_all` (degrees).

A statistic a file reports as unavailable (null) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqmcli.errors import UserError
from eqmcli.run.rundir import (
    LAST,
    SUMMARY,
    RunPaths,
    checkpoint_folder,
    read_analysis_summary,
    read_json_object,
)

GROUPS = ("all", "few", "many")
VERIFICATION_KEYS = ("accuracy", "accuracy_std", "auc", "eer")
FRACTION_PREFIXES = ("accuracy", "tar@", "auc", "eer", "closed_accuracy")


@dataclass
class RunResults:
    """The final numbers of one run directory (see the module docstring for the names)."""

    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    primary_set: str | None = None
    sets: list[str] = field(default_factory=list)
    #: each result file (relative to the run) -> (the checkpoint it records, its SHA-256)
    checkpoints: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    #: each verification set -> the fingerprint of its pairs (None: not recorded)
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    #: the folder the verification results were read from (`rundir.checkpoint_folder`)
    results_dir: Path | None = None


def is_fraction(metric: str) -> bool:
    """True for metrics stored as fractions in [0, 1] (shown as percentages)."""
    return metric.rpartition("/")[2].startswith(FRACTION_PREFIXES)


def axis_label(metric: str) -> str:
    """`metric` with the unit it is drawn in: "%" for fractions, "deg" for the mean margin
    and scope angles; CVs and other ratios have none."""
    if is_fraction(metric):
        return f"{metric} (%)"
    if metric.rpartition("/")[2] in ("margin_mean_all", "scope_mean_all"):
        return f"{metric} (deg)"
    return metric


def primary_set(paths: RunPaths) -> str | None:
    """The benchmark of the first `eval` record of the last evaluated epoch in metrics.jsonl."""
    last_epoch, primary = None, None
    for record in paths.metric_records(("eval",)):
        if record.get("epoch") != last_epoch:
            last_epoch, primary = record.get("epoch"), record.get("benchmark")
    return primary


def verification_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of one `eval/<set>.json` (unavailable ones left out)."""
    found = {key: result.get(key) for key in VERIFICATION_KEYS}
    for far, tar in (result.get("tar_at_far") or {}).items():
        found[f"tar@far={far}"] = tar
    return {key: float(value) for key, value in found.items() if isinstance(value, int | float)}


def analysis_metrics(train_summary: dict | None, test_summary: dict | None) -> dict[str, float]:
    """CVs of margin and scope (training split) and closed-set accuracy (test split) per group."""
    found: dict[str, Any] = {}
    for group in GROUPS:
        if test_summary is not None:
            found[f"closed_accuracy_{group}"] = test_summary["groups"][group]["accuracy"]
        if train_summary is not None:
            stats = train_summary["groups"][group]
            found[f"margin_cv_{group}"] = stats["margin_deg"]["cv"]
            found[f"scope_cv_{group}"] = stats["scope_max_deg"]["cv"]
    if train_summary is not None:
        found["margin_mean_all"] = train_summary["groups"]["all"]["margin_deg"]["mean"]
        found["scope_mean_all"] = train_summary["groups"]["all"]["scope_max_deg"]["mean"]
    return {key: float(value) for key, value in found.items() if isinstance(value, int | float)}


def _for(checkpoint: str | None, summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """An analysis summary, unless a ``checkpoint`` is asked for and it names another one."""
    if checkpoint is None or summary is None:
        return summary
    recorded = summary.get("checkpoint")
    return summary if isinstance(recorded, str) and Path(recorded).name == checkpoint else None


def _note_checkpoint(results: RunResults, path: Path, result: dict[str, Any]) -> None:
    """Remember which checkpoint the result file ``path`` says it came from (if it says)."""
    checkpoint = result.get("checkpoint")
    if isinstance(checkpoint, str):
        sha = result.get("checkpoint_sha256")
        name = str(path.relative_to(results.run_dir))
        results.checkpoints[name] = (checkpoint, sha if isinstance(sha, str) else None)


def read_run_results(run_dir: str | Path, checkpoint: str | None = None) -> RunResults:
    """Collect a run directory's final numbers; a folder that is no run is a `UserError`.

    ``checkpoint`` (a file name in ``checkpoints/``, e.g. best.pt) reads that checkpoint's
    verification and analysis results (`rundir.checkpoint_folder`: ``eval/best/``,
    ``analysis/best/``; analysis files only when they name it); None reads last.pt's
    (``eval/``, ``analysis/``)."""
    paths = RunPaths(Path(run_dir))
    if not paths.recipe.is_file():
        raise UserError(f"{paths.root} is not a run directory (no recipe.yaml)")
    folder = checkpoint_folder(paths.eval_dir, checkpoint or LAST)
    analysis_dir = checkpoint_folder(paths.analysis_dir, checkpoint or LAST)
    if checkpoint is not None and not folder.is_dir():
        raise UserError(f"{folder} does not exist: evaluate that checkpoint first with "
                        f"'eqm eval {paths.checkpoints / checkpoint}'")
    results = RunResults(run_dir=paths.root, primary_set=primary_set(paths),
                         results_dir=folder)
    evaluations = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if results.primary_set is None and len(evaluations) == 1:
        results.primary_set = evaluations[0].stem  # evaluated after training, one set
    for path in evaluations:
        result = read_json_object(path) or {}
        name = str(result.get("benchmark") or path.stem)
        results.sets.append(name)
        fingerprint = result.get("pairs_fingerprint")
        results.fingerprints[name] = fingerprint if isinstance(fingerprint, str) else None
        _note_checkpoint(results, path, result)
        for key, value in verification_metrics(result).items():
            results.metrics[f"{name}/{key}"] = value
            if name == results.primary_set:
                results.metrics[key] = value
    train_summary = _for(checkpoint, read_analysis_summary(analysis_dir))
    test_summary = _for(checkpoint, read_analysis_summary(analysis_dir / "test"))
    for summary, path in ((train_summary, analysis_dir / SUMMARY),
                          (test_summary, analysis_dir / "test" / SUMMARY)):
        _note_checkpoint(results, path, summary or {})
    try:
        results.metrics.update(analysis_metrics(train_summary, test_summary))
    except (KeyError, TypeError):
        raise UserError(f"{analysis_dir} holds a summary.json of another layout; "
                        "rerun 'eqm analyze'") from None
    return results
