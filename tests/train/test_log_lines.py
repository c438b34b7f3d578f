"""Plain log lines for consoles without a live bar (a batch job's log file, --no-progress)."""

from __future__ import annotations

import json


def test_redirected_output_gets_one_line_per_logged_step_epoch_and_verification(
    tiny_recipe_path, tmp_path, eqm
):
    run = tmp_path / "run"
    result = eqm("train", str(tiny_recipe_path), "--out", str(run))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    total = steps[-1]["step"]
    lines = result.output.splitlines()
    step_lines = [line for line in lines if line.startswith("epoch ") and " step " in line]
    assert len(step_lines) == len(steps)  # one line per metrics.jsonl step record
    assert step_lines[-1].startswith(f"epoch 2/2  step {total}/{total}  loss ")
    assert "img/s" in step_lines[-1] and "ETA 0:00:00" in step_lines[-1]
    assert "hard " in step_lines[-1] and "over-t2 " in step_lines[-1]  # EqM diagnostics
    assert sum("done: mean loss" in line for line in lines) == 2
    evals = [r for r in records if r["kind"] == "eval"]
    eval_lines = [line for line in lines if "verification on synthetic" in line]
    assert len(eval_lines) == len(evals) == 2
    assert f"{100 * evals[-1]['accuracy']:.2f}%" in eval_lines[-1]
    # no half-drawn progress bar in a log file (the bar's lines start with "epoch" too)
    assert not [line for line in lines if line.startswith("epoch") and "━" in line]


def test_no_progress_on_a_terminal_still_logs_lines(tiny_recipe_path, tmp_path, eqm):
    run = tmp_path / "run"
    result = eqm("train", str(tiny_recipe_path), "--out", str(run), "--no-progress",
                 "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    assert "epoch 1/1 done: mean loss" in result.output


def test_speed_window_restarted_at_an_epoch_start_leaves_out_the_evaluation_before_it(
    monkeypatch,
):
    from eqmcli.train import trainer

    clock = iter([10.0, 30.0, 31.0])  # 100 images in 10 s, then a 20 s evaluation
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: next(clock))
    meter = trainer.Meter(started=0.0, window_start=0.0)
    meter.add(100)
    assert meter.window_speed() == 10.0  # 100 images / 10 s
    meter.restart_window()  # t = 30: the next epoch starts after a 20 s evaluation
    meter.add(100)
    assert meter.window_speed() == 100.0  # 100 images / 1 s, the 20 s left out
