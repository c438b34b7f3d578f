"""Where `eqm eval` writes and what its results record (issue 19 item 2): no checkpoint's
results replace another's, and `eqm compare` names the checkpoint behind every group."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


def test_best_checkpoint_results_go_to_their_own_folder_and_record_the_checkpoint(
    untrained_run, eqm
):
    checkpoints = untrained_run / "checkpoints"
    shutil.copy(checkpoints / "last.pt", checkpoints / "best.pt")
    assert eqm("eval", untrained_run, "--no-flip", "--device", "cpu").exit_code == 0
    last = json.loads((untrained_run / "eval" / "synthetic.json").read_text())
    result = eqm("eval", checkpoints / "best.pt", "--no-flip", "--device", "cpu")
    assert result.exit_code == 0, result.output
    best = json.loads((untrained_run / "eval" / "best" / "synthetic.json").read_text())
    assert (untrained_run / "eval" / "best" / "synthetic.pairs.npz").is_file()
    last_again = json.loads((untrained_run / "eval" / "synthetic.json").read_text())
    assert last_again == last, "not replaced"
    assert Path(last["checkpoint"]).name == "last.pt" and Path(best["checkpoint"]).name == "best.pt"
    digest = hashlib.sha256((checkpoints / "best.pt").read_bytes()).hexdigest()
    assert best["checkpoint_sha256"] == digest == last["checkpoint_sha256"]
    assert best["preprocessing"] == {"color_order": "RGB", "mean": [0.5] * 3,
                                     "std": [0.5] * 3, "source": "recipe"}


def test_eval_out_writes_only_into_the_given_folder(untrained_run, tmp_path, eqm):
    out = tmp_path / "mine"
    result = eqm("eval", untrained_run, "--no-flip", "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "synthetic.json").is_file() and (out / "synthetic.pairs.npz").is_file()
    assert not (untrained_run / "eval").exists()
    result = eqm("eval", untrained_run, "--device", "cpu", "--out", out / "synthetic.json")
    assert result.exit_code == 2 and "is a file, not a folder" in result.output
    assert "Traceback" not in result.output


def _fake_run(folder: Path, eval_checkpoint: str, analysis_checkpoint: str | None) -> Path:
    """A run with eval/synthetic.json (and analysis/summary.json) naming their checkpoints."""
    (folder / "eval").mkdir(parents=True)
    (folder / "recipe.yaml").write_text("name: fake\n")
    (folder / "metrics.jsonl").write_text(
        json.dumps({"kind": "eval", "epoch": 1, "benchmark": "synthetic"}) + "\n")
    result = {"benchmark": "synthetic", "accuracy": 0.9, "auc": 0.95, "checkpoint": eval_checkpoint,
              "checkpoint_sha256": "ab" * 32}
    (folder / "eval" / "synthetic.json").write_text(json.dumps(result))
    if analysis_checkpoint is not None:
        group = {"margin_deg": {"cv": 0.1, "mean": 20.0}, "scope_max_deg": {"cv": 0.2,
                                                                           "mean": 40.0}}
        summary = {"checkpoint": analysis_checkpoint,
                   "groups": {g: group for g in ("all", "few", "many")}}
        (folder / "analysis").mkdir()
        (folder / "analysis" / "summary.json").write_text(json.dumps(summary))
    return folder


def test_compare_refuses_a_run_whose_results_come_from_two_checkpoints(tmp_path, eqm):
    mixed = _fake_run(tmp_path / "mixed", "mixed/checkpoints/best.pt",
                      "mixed/checkpoints/last.pt")
    other = _fake_run(tmp_path / "other", "other/checkpoints/last.pt", None)
    result = eqm("compare", other, mixed)
    assert result.exit_code == 2, result.output
    assert "holds results of different checkpoints" in result.output
    assert "eval/synthetic.json from mixed/checkpoints/best.pt" in result.output
    assert "Traceback" not in result.output


def test_compare_names_the_checkpoint_of_each_group(tmp_path, eqm):
    a = _fake_run(tmp_path / "a", "a/checkpoints/last.pt", "a/checkpoints/last.pt")
    b = _fake_run(tmp_path / "b", "b/checkpoints/best.pt", None)
    result = eqm("compare", a, b, "--metric", "auc", "--json")
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)["groups"]
    assert [g["checkpoints"] for g in groups] == [["last.pt abababababab"],
                                                  ["best.pt abababababab"]]
    result = eqm("compare", a, b, "--metric", "auc")
    assert "last.pt" in result.stdout and "best.pt" in result.stdout


def test_compare_a_runs_best_checkpoint_with_its_last(untrained_run, eqm):
    import torch

    from eqmcli.run.checkpoint import load_checkpoint, save_checkpoint

    checkpoints = untrained_run / "checkpoints"
    state = load_checkpoint(checkpoints / "last.pt")
    torch.manual_seed(1)
    state["backbone"] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                         for k, v in state["backbone"].items()}
    save_checkpoint(state, checkpoints / "best.pt")
    result = eqm("compare", checkpoints / "best.pt", untrained_run)
    assert result.exit_code == 2 and "evaluate that checkpoint first" in result.output
    for model in (untrained_run, checkpoints / "best.pt"):
        assert eqm("eval", model, "--no-flip", "--device", "cpu").exit_code == 0
    result = eqm("compare", checkpoints / "best.pt", untrained_run, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [g["checkpoints"][0].split()[0] for g in report["groups"]]
    assert names == ["best.pt", "last.pt"]
    assert report["comparisons"][0]["mcnemar"]["pairs"] == 80, "the same synthetic pairs"
    result = eqm("compare", untrained_run / "recipe.yaml")
    assert result.exit_code == 2 and "not a checkpoint of a run" in result.output


def test_a_checkpoint_outside_a_run_writes_beside_itself(untrained_run, tmp_path, eqm):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(untrained_run / "checkpoints" / "last.pt", models / "r.pt")
    result = eqm("eval", models / "r.pt", "--no-flip", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (models / "r.pt.eval" / "synthetic.json").is_file()
    assert not (models / "eval").exists() and not (untrained_run / "eval").exists()
