"""`eqm bench train`, `head-cost` and `all` at tiny sizes (CPU, a few seconds in all)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eqmcli.bench.head_cost import benchmark_head_cost, estimate_bytes
from eqmcli.bench.suite import run_all
from eqmcli.bench.training import TrainConfig, benchmark_training, default_configs
from eqmcli.errors import UserError

TINY_TRAIN = ["--backbone", "tiny", "--size", "24", "--batch", "4", "--classes", "10",
              "--steps", "1", "--warmup", "0", "--device", "cpu", "--no-compile"]


def test_cli_bench_train_reports_every_config_against_the_fp32_baseline(
    tmp_path: Path, eqm
) -> None:
    out = tmp_path / "train.json"
    result = eqm("bench", "train", *TINY_TRAIN, "--json", str(out))
    assert result.exit_code == 0, result.output
    for label in ("fp32", "fp32+cl", "bf16", "bf16+cl", "vs fp32 eager"):
        assert label in result.output
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "train"
    assert payload["settings"]["size"] == [24, 24] and payload["settings"]["batch"] == 4
    assert payload["environment"]["torch"] and payload["environment"]["device"] == "cpu"
    rows = payload["rows"]
    assert [r["config"] for r in rows] == ["fp32", "fp32+cl", "bf16", "bf16+cl"]
    assert rows[0]["speedup"] == 1.0
    for row in rows:
        assert row["images_per_s"] > 0 and row["samples"] == 1 and row["loss_finite"]
        assert row["speedup"] == pytest.approx(row["images_per_s"] / rows[0]["images_per_s"])
    # same initial weights and batch: fp32 with or without channels_last gives the same loss
    assert rows[1]["first_loss"] == pytest.approx(rows[0]["first_loss"], rel=1e-4)
    assert any("compile" in note for note in payload["notes"])


def test_fp16_is_skipped_on_the_cpu_and_the_baseline_comes_first() -> None:
    result = benchmark_training(
        backbone="tiny", size=24, batch=2, classes=5, steps=1, warmup=0, device="cpu",
        configs=[TrainConfig("fp16", False, False)],
    )
    assert [row.config for row in result.rows] == ["fp32"]
    assert any("fp16" in note for note in result.notes)


def test_default_configs_per_device() -> None:
    import torch

    cpu = [c.label for c in default_configs(torch.device("cpu"))]
    assert cpu[0] == "fp32" and "compile+bf16+cl" in cpu and not any("fp16" in c for c in cpu)
    cuda = [c.label for c in default_configs(torch.device("cuda"), include_compile=False)]
    assert "fp16+cl" in cuda and not any(c.startswith("compile") for c in cuda)


@pytest.mark.parametrize(
    "option",
    [["--classes", "0"], ["--batch", "1"], ["--steps", "0"], ["--backbone", "nonet"],
     ["--head", "nohead"], ["--device", "gpu"]],
)
def test_cli_bench_train_bad_options_exit_2(option: list[str], eqm) -> None:
    result = eqm("bench", "train", *TINY_TRAIN, *option)
    assert result.exit_code == 2, result.output


def test_cli_bench_head_cost_table_and_json(tmp_path: Path, eqm) -> None:
    out = tmp_path / "cost.json"
    result = eqm("bench", "head-cost", "--classes", "20,300", "--dim", "8",
                 "--batch", "4", "--repeats", "2", "--device", "cpu",
                 "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "Head cost" in result.output and "peak memory:" in result.output
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "head-cost" and payload["settings"]["head"] == "eqm"
    assert [r["classes"] for r in payload["rows"]] == [20, 300]
    for row in payload["rows"]:
        assert row["skipped"] is None and row["ms"] > 0 and row["samples"] == 2
        assert row["weight_bytes"] == row["classes"] * 8 * 4 == row["grad_bytes"]
        assert row["saved_bytes"] >= 4 * 4 * row["classes"]  # at least the (B, C) cosines


def test_head_cost_skips_what_does_not_fit() -> None:
    huge = 10**12
    result = benchmark_head_cost([huge], dim=8, batch=2, device="cpu", repeats=1)
    (row,) = result.rows
    assert row.skipped and "GiB" in row.skipped and row.ms is None
    assert row.estimated_bytes == estimate_bytes(huge, 8, 2)
    assert result.notes


@pytest.mark.parametrize("text", ["0", "10,x", "", "1"])
def test_head_cost_rejects_bad_class_lists(text: str, eqm) -> None:
    result = eqm("bench", "head-cost", "--classes", text, "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "--classes" in result.output and "Traceback" not in result.output


def test_cli_bench_head_cost_bad_classes_exit_2(eqm) -> None:
    result = eqm("bench", "head-cost", "--classes", "0", "--device", "cpu")
    assert result.exit_code == 2


def test_run_all_collects_every_part_with_tiny_overrides() -> None:
    tables: list[str] = []
    combined = run_all(
        "cpu",
        parts=("train", "heads", "head-cost"),
        report=lambda part, table: tables.append(part),
        overrides={
            "train": {"backbone": "tiny", "size": 24, "batch": 2, "classes": 5, "steps": 1,
                      "warmup": 0, "configs": [TrainConfig("fp32", False, False)]},
            "heads": {"num_classes": 10, "embedding_dim": 4, "batch_size": 2, "repeats": 1},
            "head-cost": {"classes": [10], "dim": 4, "batch": 2, "repeats": 1},
        },
    )
    assert tables == ["train", "heads", "head-cost"]
    assert combined["environment"]["torch"] and set(combined["parts"]) == set(tables)
    assert combined["parts"]["train"]["rows"][0]["speedup"] == 1.0
    with pytest.raises(UserError, match="nopart"):
        run_all("cpu", parts=("nopart",))


def test_cli_bench_extract_reports_images_per_second(eqm):


    result = eqm("bench", "extract", "--backbone", "tiny", "--size", "24", "--batch", "4",
                 "--batches", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output and "tiny 24x24" in result.output


def test_cli_bench_head_memory_halves_per_rank_bytes(tmp_path: Path, eqm) -> None:
    out = tmp_path / "memory.json"
    result = eqm("bench", "head-memory", "--classes", "64", "--dim", "8",
                 "--batch", "8", "--world-sizes", "1,2", "--json", str(out))
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["world_size"] for r in rows] == [1, 2] and [r["classes"] for r in rows] == [64, 32]
    assert rows[0]["weight_bytes"] == 64 * 8 * 4 == 2 * rows[1]["weight_bytes"]
    assert rows[1]["momentum_bytes"] == rows[1]["grad_bytes"] == rows[1]["weight_bytes"]
