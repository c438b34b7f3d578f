"""`model.init_from` / `model.init_head`: a new run starts from another run's weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_runs import train_tiny_run

from eqmcli.data import build_train_data
from eqmcli.data.transforms import to_model_input
from eqmcli.errors import UserError
from eqmcli.run.checkpoint import load_checkpoint, save_checkpoint
from eqmcli.run.recipe import load_recipe
from eqmcli.run.rundir import load_trained
from eqmcli.train import train

#: another synthetic class set: other identities (seed), another class count
OTHER_CLASSES = ["data.train.seed=11", "data.train.num_classes=12", "eval.every_epochs=0"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe (8 synthetic classes, 16-d) trained for 4 epochs."""
    return train_tiny_run(tmp_path_factory.mktemp("source") / "run", "train.epochs=4",
                          "eval.every_epochs=0")


def losses(recipe_path: Path, out: Path, overrides: list[str]) -> tuple[float, float]:
    """(loss of the first step, mean loss of the first epoch) of a 1-epoch run."""
    train(load_recipe(recipe_path, [*overrides, "train.epochs=1"]), out, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first_step = next(r["loss"] for r in records if r["kind"] == "step" and r["step"] == 1)
    return first_step, next(r["loss"] for r in records if r["kind"] == "epoch")


@pytest.mark.slow
def test_finetuning_starts_from_a_lower_loss_than_scratch(
    tmp_path: Path, tiny_recipe_path: Path, train_tiny
) -> None:
    """A source trained on 100 synthetic identities, fine-tuned onto 20 other identities.

    With imprinted centres (`model.init_head: imprint`) the first step's loss and the first
    epoch's mean loss are below a run from scratch on the same data (same seed: same data
    order). A random new head (`init_head: false`) is measured and printed too (`-s`).
    """
    wide = ["model.embedding_dim=64", "eval.every_epochs=0"]
    # batches of 64: 96 steps instead of 384, and a source whose imprinted start is further
    # below scratch (first step 3.19 vs 4.68, first epoch 2.99 vs 4.43) than with 16
    source = train_tiny("data.train.num_classes=100", "train.epochs=6", "train.batch_size=64",
                        *wide, out="source")
    target = ["data.train.seed=11", "data.train.num_classes=20", *wide]
    scratch = losses(tiny_recipe_path, tmp_path / "scratch", target)
    imprinted = losses(tiny_recipe_path, tmp_path / "imprinted",
                       [*target, f"model.init_from={source}", "model.init_head=imprint"])
    random_head = losses(tiny_recipe_path, tmp_path / "random_head",
                         [*target, f"model.init_from={source}"])
    print(f"(first step, first epoch) loss: scratch {scratch}, init_from + imprint "
          f"{imprinted}, init_from + random head {random_head}")
    assert imprinted[0] < scratch[0] and imprinted[1] < scratch[1]


def test_init_head_loads_the_centres_when_the_class_count_matches(
    tmp_path: Path, tiny_recipe_path: Path, source_run: Path
) -> None:
    recipe = load_recipe(tiny_recipe_path, [
        f"model.init_from={source_run}", "model.init_head=true", "train.epochs=1",
        "eval.every_epochs=0", "optim.lr=1e-9", "optim.weight_decay=0", "optim.momentum=0",
    ])
    train(recipe, tmp_path / "run", progress=False)
    source = load_checkpoint(source_run / "checkpoints" / "last.pt")
    tuned = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert torch.allclose(tuned["head"]["weight"], source["head"]["weight"], atol=1e-5)
    assert all(torch.allclose(tuned["backbone"][k].float(), v.float(), atol=1e-4)
               for k, v in source["backbone"].items() if not k.endswith("num_batches_tracked")
               and "running" not in k)


def test_imprint_sets_each_centre_to_its_class_mean_embedding(
    tmp_path: Path, tiny_recipe_path: Path, source_run: Path
) -> None:
    frozen = ["optim.lr=1e-9", "optim.weight_decay=0", "optim.momentum=0", "train.epochs=1"]
    recipe = load_recipe(tiny_recipe_path, [
        *OTHER_CLASSES, *frozen, f"model.init_from={source_run}", "model.init_head=imprint",
    ])
    train(recipe, tmp_path / "run", progress=False)
    centres = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["head"]["weight"]
    backbone = load_trained(source_run).backbone
    data = build_train_data(recipe.data.train)
    sums = torch.zeros(12, 16)
    with torch.no_grad():
        for index in range(len(data.dataset)):
            image, label = data.dataset[index]
            feature = backbone(to_model_input(image.unsqueeze(0), "cpu"))[0]
            sums[int(label)] += feature / feature.norm()
    expected = sums / sums.norm(dim=1, keepdim=True)
    assert centres.shape == (12, 16) and torch.allclose(centres, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([*OTHER_CLASSES, "model.init_head=true"],
         "tensor 'head.weight' has shape (8, 16) but the new run's head needs (12, 16)"),
        (["model.embedding_dim=32"], "tensor 'linear.weight' has shape (16, 256)"),
        (["model.backbone=iresnet18"], "holds a tiny backbone; model.backbone is iresnet18"),
    ],
)
def test_mismatch_is_one_sentence_naming_the_tensor(
    tmp_path: Path, tiny_recipe_path: Path, source_run: Path, overrides: list[str], message: str
) -> None:
    recipe = load_recipe(tiny_recipe_path, [f"model.init_from={source_run}", *overrides])
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(recipe, tmp_path / "run", progress=False)


def test_cli_mismatch_exits_2(
    tmp_path: Path, tiny_recipe_path: Path, source_run: Path, eqm
) -> None:
    result = eqm("train", tiny_recipe_path, "--out", tmp_path / "run", "--no-progress",
                 "--set", f"model.init_from={source_run}", "--set", "model.embedding_dim=32")
    assert result.exit_code == 2, result.output
    assert "'linear.weight'" in result.output and "Traceback" not in result.output


def test_init_from_weights_that_are_not_finite_is_refused(
    tmp_path: Path, tiny_recipe_path: Path, source_run: Path, eqm
) -> None:
    state = load_checkpoint(source_run / "checkpoints" / "last.pt")
    name = next(k for k, v in state["backbone"].items() if v.is_floating_point())
    state["backbone"][name][(0,) * state["backbone"][name].ndim] = float("nan")
    save_checkpoint(state, tmp_path / "nan.pt")
    result = eqm("train", tiny_recipe_path, "--out", tmp_path / "run", "--no-progress",
                 "--set", f"model.init_from={tmp_path / 'nan.pt'}")
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"tensor '{name}' holds 1 NaN or infinite value(s)" in said, said


def test_resume_restores_the_run_not_the_init_source(
    tmp_path: Path, tiny_recipe_path: Path, source_run: Path
) -> None:
    """On --resume the run's own checkpoint is the start: init_from is not read again."""
    source_copy = tmp_path / "source"
    shutil.copytree(source_run, source_copy)
    overrides = [*OTHER_CLASSES, f"model.init_from={source_copy}"]
    run = tmp_path / "run"
    train(load_recipe(tiny_recipe_path, [*overrides, "train.epochs=1"]), run, progress=False)
    shutil.rmtree(source_copy)  # gone: a resume that read it would fail
    summary = train(load_recipe(tiny_recipe_path, [*overrides, "train.epochs=2"]), run,
                    resume=True, progress=False)
    assert summary.epochs_done == 2 and summary.resumed_from_step is not None
