"""Per-pair verification scores are saved with every eval/<set>.json (for McNemar's test),
and `eqm plot` draws an `eqm sweep` folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from eqmcli.evaluation.evaluate import write_result
from eqmcli.evaluation.pair_outcomes import pair_correctness, pairs_path
from eqmcli.evaluation.pair_sets import VerificationSet
from eqmcli.evaluation.verification import evaluate_set


class _Images(torch.utils.data.Dataset):
    def __init__(self, count: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (count, 3, 8, 8), dtype=torch.uint8,
                                    generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], 0


def test_eval_result_writes_per_pair_scores_that_reproduce_the_fold_accuracies(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, 24, size=(40, 2))
    vset = VerificationSet("toy", _Images(24), pairs, np.arange(40) % 2 == 0, folds=4)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6)).eval()
    evaluation = evaluate_set(backbone, vset, device="cpu", input_size=(8, 8), progress=False)
    assert evaluation.scores.shape == (40,) and evaluation.issame.dtype == bool
    write_result(tmp_path, evaluation)
    assert pairs_path(tmp_path / "eval", "toy").is_file()
    assert "scores" not in json.loads((tmp_path / "eval" / "toy.json").read_text())
    correct, issame = pair_correctness(tmp_path / "eval", "toy")
    np.testing.assert_array_equal(issame, vset.issame)
    assert correct.mean() == pytest.approx(evaluation.result.accuracy)


def test_eqm_plot_draws_a_sweep_folder(tmp_path, eqm):

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    stats = {"accuracy": {"mean": 0.9, "std": 0.01, "n": 2, "values": [0.89, 0.91]}}
    configs = [{"config": f"scale={s}", "assignments": {"loss.scale": s}, "runs": [],
                "metrics": stats} for s in (16, 32, 64)]
    (sweep / "sweep.json").write_text(json.dumps(
        {"grid": {"loss.scale": [16, 32, 64]}, "seeds": 2, "members": [], "configs": configs}))
    result = eqm("plot", str(sweep))
    assert result.exit_code == 0, result.output
    assert (sweep / "figures" / "sweep-accuracy-vs-loss.scale.png").stat().st_size > 1000
    result = eqm("plot", str(sweep), "--x", "loss.t9")
    assert result.exit_code == 2 and "is not swept here" in result.output
