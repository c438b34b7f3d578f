"""Training's final evaluation and `eqm eval RUN` are the same computation on `last.pt`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eqmcli.evaluation.evaluate import load_training_sets
from eqmcli.evaluation.features import extract_embeddings
from eqmcli.run.rundir import load_trained


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_final_training_eval_equals_eqm_eval_of_last_checkpoint(
    train_tiny, precision: str, eqm
) -> None:
    # bf16 training (what `precision: auto` picks on CPUs with native bf16) and the NHWC
    # model training leaves behind must not change the evaluation's embeddings
    out = train_tiny(f"train.precision={precision}", "train.channels_last=true")
    trained_json = json.loads((out / "eval" / "synthetic.json").read_text())
    trained_scores = np.load(out / "eval" / "synthetic.pairs.npz")["score"]

    result = eqm("eval", str(out), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)["synthetic"]
    assert evaluated["checkpoint"] == trained_json["checkpoint"]
    for recorded in ("preprocessing", "pairs_fingerprint"):  # training's result records them too
        assert evaluated[recorded] == trained_json[recorded] is not None
    assert evaluated["pairs"] == trained_json["pairs"]
    assert evaluated["accuracy"] == trained_json["accuracy"]
    assert evaluated["accuracy_noflip"] == trained_json["accuracy_noflip"]
    assert evaluated["threshold"] == trained_json["threshold"]
    evaluated_scores = np.load(out / "eval" / "synthetic.pairs.npz")["score"]
    np.testing.assert_array_equal(evaluated_scores, trained_scores)


def test_embeddings_do_not_depend_on_the_models_memory_format(tiny_run: Path) -> None:
    trained = load_trained(tiny_run)
    images = load_training_sets(trained.recipe)[0].images
    kwargs = {"device": "cpu", "input_size": trained.input_size, "progress": False}
    contiguous = extract_embeddings(trained.backbone, images, **kwargs)
    trained.backbone.to(memory_format=torch.channels_last)
    nhwc = extract_embeddings(trained.backbone, images, **kwargs)
    assert torch.equal(contiguous.plain, nhwc.plain)
    assert torch.equal(contiguous.flip, nhwc.flip)
