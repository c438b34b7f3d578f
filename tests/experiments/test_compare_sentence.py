"""The sentence `eqm compare` prints for McNemar's test names which run won each
discordant pair (it used to say "the first", which read as the run named first)."""

from __future__ import annotations

from eqmcli.cli.experiment_tables import describe_comparison
from eqmcli.experiments.compare import Comparison, McNemarResult, mcnemar_exact


def test_mcnemar_sentence_names_the_run_behind_each_count():
    table = McNemarResult(benchmark="lfw", pairs=100, both_correct=80, only_a=12, only_b=3,
                          both_wrong=5, p_value=mcnemar_exact(12, 3))
    comparison = Comparison(a="runs/ref", b="runs/other", metric="accuracy", mcnemar=table)
    text = describe_comparison(comparison)
    assert text.startswith("runs/other vs runs/ref")
    assert "3 right only by runs/other" in text  # only_b: b right, a wrong
    assert "12 only by runs/ref" in text  # only_a: a right, b wrong
