"""The training core's shape (issue 11): one step, statistics on logging steps only,
heads that compose instead of being told apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import eqmcli.bench.training
import eqmcli.devices
import eqmcli.train.setup
import eqmcli.train.step
import eqmcli.train.trainer
from eqmcli.bench.training import TrainConfig, benchmark_training
from eqmcli.devices import autocast_dtype
from eqmcli.errors import UserError
from eqmcli.losses import EqMHead, build_head
from eqmcli.run.recipe import load_recipe
from eqmcli.train import train

PACKAGE = Path(eqmcli.train.__file__).resolve().parents[1]


def test_bench_train_and_eqm_train_call_the_same_step(tiny_recipe_path, tmp_path, monkeypatch):
    assert eqmcli.bench.training.train_step is eqmcli.train.trainer.train_step
    assert eqmcli.train.trainer.train_step is eqmcli.train.step.train_step
    calls: list[str] = []
    real = eqmcli.train.step.to_model_input  # called inside train_step, nowhere else

    def counted(*args, **kwargs):
        calls.append("step")
        return real(*args, **kwargs)

    monkeypatch.setattr(eqmcli.train.step, "to_model_input", counted)
    summary = train(load_recipe(tiny_recipe_path, ["train.epochs=1", "eval.every_epochs=0"]),
                    tmp_path / "run", progress=False)
    assert len(calls) == summary.steps > 0
    calls.clear()
    benchmark_training(backbone="tiny", size=24, batch=2, classes=5, steps=2, warmup=1,
                       device="cpu", configs=[TrainConfig("fp32", False, False)])
    assert len(calls) == 3, "warm-up and timed steps all go through train_step"


def test_eqm_statistics_are_computed_on_logging_steps_only(tiny_recipe_path, tmp_path,
                                                          monkeypatch):
    computed: list[int] = []
    real = EqMHead.stat_terms

    def counted(self, cos, columns):
        computed.append(1)
        return real(self, cos, columns)

    monkeypatch.setattr(EqMHead, "stat_terms", counted)
    out = tmp_path / "run"
    summary = train(load_recipe(tiny_recipe_path, ["train.epochs=1", "eval.every_epochs=0",
                                                   "train.log_every=3"]), out, progress=False)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in steps if r["kind"] == "step"]
    assert summary.steps > len(logged) == len(computed) > 0
    assert all("hard_fraction" in r and "case_both" in r for r in logged)


def test_a_step_without_statistics_has_the_same_loss_and_keeps_the_last_stats():
    torch.manual_seed(0)
    head = build_head("eqm", 20, 8, scale=16.0)
    x, labels = torch.randn(6, 8), torch.randint(0, 20, (6,))
    with_stats = head(x, labels)
    before = head.last_stats
    head.collect_stats = False
    other = torch.randn(6, 8)
    without = head(other, labels)
    assert head.last_stats == before, "no statistics were computed"
    head.collect_stats = True
    assert torch.equal(head(other, labels), without) and not torch.equal(without, with_stats)
    assert head.last_stats != before


def test_no_head_type_is_tested_outside_the_losses_and_the_sharded_head():
    head_types = ("ShardedHead", "MarginHead", "EqMHead", "SoftmaxHead", "SphereFaceHead",
                  "ArcFaceHead", "CosFaceHead", "NormFaceHead", "FocalHead", "GASoftmaxHead",
                  "ClassSharded", "WholeRows")
    pattern = re.compile(r"isinstance\([^)]*\b(" + "|".join(head_types) + r")\b")
    allowed = {PACKAGE / "losses", PACKAGE / "distributed"}
    offenders = [
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
        if not any(folder in path.parents for folder in allowed)
        and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_auto_precision_trains_in_bf16_only_on_cpus_with_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(eqmcli.devices, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype("auto", cpu, training=True) == torch.bfloat16
    assert autocast_dtype("auto", cpu) is None, "embeddings stay float32 on the CPU"
    assert autocast_dtype("fp32", cpu, training=True) is None
    monkeypatch.setattr(eqmcli.devices, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype("auto", cpu, training=True) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16


def test_native_bf16_probe_follows_torchs_cpu_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert eqmcli.devices.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not eqmcli.devices.cpu_has_native_bf16()


def test_fp16_on_the_cpu_is_refused_before_the_data_is_read(tiny_recipe_path, tmp_path,
                                                            monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the training data was read before the precision was checked")

    monkeypatch.setattr(eqmcli.train.setup, "build_train_data", never)
    recipe = load_recipe(tiny_recipe_path, ["train.precision=fp16", "train.device=cpu"])
    with pytest.raises(UserError, match="precision 'fp16' needs a CUDA device"):
        train(recipe, tmp_path / "run", progress=False)
