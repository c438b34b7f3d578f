"""`eqm import insightface` / `eqm export --insightface`: arcface_torch weights in and out.

The arcface_torch stand-ins (``tests/interop_helpers.py``) are independent modules with
InsightFace's parameter names and architecture; their ``state_dict`` is what a
``backbone.pth`` holds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from interop_helpers import (
    ArcIResNet,
    ArcMobileFaceNet,
    randomized,
    write_images,
)
from PIL import Image

from eqmcli.run.checkpoint import load_checkpoint
from eqmcli.run.rundir import load_trained

REFERENCES = {"r18": lambda: ArcIResNet((2, 2, 2, 2)), "mbf": ArcMobileFaceNet}


def save_reference(tmp_path: Path, arch: str, seed: int = 0) -> tuple[torch.nn.Module, Path]:
    net = randomized(REFERENCES[arch](), seed)
    path = tmp_path / f"{arch}_backbone.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.mark.parametrize("arch", ["r18", "mbf"])
def test_imported_model_gives_insightface_embeddings(tmp_path: Path, arch: str, eqm) -> None:
    """Same images, same embeddings as the arcface_torch-named module (max |Δ| <= 1e-5 fp32)."""
    reference, weights = save_reference(tmp_path, arch)
    run = tmp_path / "run"
    result = eqm("import", "insightface", weights, "--arch", arch, "--out", run)
    assert result.exit_code == 0, result.output
    images = write_images(tmp_path / "images", 4)
    result = eqm("embed", run, tmp_path / "images", "--out", tmp_path / "f.npy", "--raw",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    ours = torch.from_numpy(np.load(tmp_path / "f.npy"))
    listed = (tmp_path / "f.paths.txt").read_text().split()
    assert listed == [str(p) for p in images]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p))) for p in images])
    x = (pixels.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5  # InsightFace: RGB, mean/std 0.5
    with torch.no_grad():
        theirs = reference(x)
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) <= 1e-5
    recipe = load_trained(run).recipe
    assert recipe.model.preprocessing.color_order == "rgb"
    assert (recipe.model.preprocessing.mean, recipe.model.preprocessing.std) == (0.5, 0.5)
    assert (run / "imported.json").is_file() and (run / "recipe.yaml").is_file()


def write_shards(folder: Path, centres: torch.Tensor, world: int) -> None:
    """Partial FC's split: rank r holds C // W + (r < C % W) consecutive rows."""
    folder.mkdir(parents=True, exist_ok=True)
    total = centres.shape[0]
    start = 0
    for rank in range(world):
        rows = total // world + int(rank < total % world)
        shard = {
            "epoch": 3, "global_step": 100,
            "state_dict_softmax_fc": {"weight": centres[start : start + rows].clone()},
            "state_optimizer": {}, "state_lr_scheduler": {"last_epoch": 3},
        }
        torch.save(shard, folder / f"checkpoint_gpu_{rank}.pt")
        start += rows


@pytest.mark.parametrize("world", [3, 11])
def test_head_shards_are_reassembled_in_rank_order(tmp_path: Path, world: int, eqm) -> None:
    """3 shards, and 11 (where file-name order 0, 1, 10, 2, ... is not rank order)."""
    _, weights = save_reference(tmp_path, "mbf")
    centres = torch.randn(3 * world + 2, 512, generator=torch.Generator().manual_seed(1))
    write_shards(tmp_path / "shards", centres, world)
    run = tmp_path / "run"
    result = eqm("import", "insightface", weights, "--arch", "mbf", "--out", run,
                 "--head", str(tmp_path / "shards" / "checkpoint_gpu_*.pt"))
    assert result.exit_code == 0, result.output
    head = load_trained(run).head
    assert head is not None and torch.equal(head.weight.detach(), centres)
    assert f"{centres.shape[0]:,} class centres from {world} shard(s)" in result.output


def test_missing_shard_or_foreign_rows_are_refused(tmp_path: Path, eqm) -> None:
    _, weights = save_reference(tmp_path, "mbf")
    write_shards(tmp_path / "shards", torch.randn(10, 512), 3)
    (tmp_path / "shards" / "checkpoint_gpu_1.pt").unlink()
    result = eqm("import", "insightface", weights, "--arch", "mbf", "--out",
                 tmp_path / "run", "--head", tmp_path / "shards")
    assert result.exit_code == 2, result.output
    assert "checkpoint_gpu_1.pt" in result.output and "missing" in result.output
    write_shards(tmp_path / "shards", torch.randn(10, 512), 3)
    torch.save({"state_dict_softmax_fc": {"weight": torch.randn(1, 512)}},
               tmp_path / "shards" / "checkpoint_gpu_0.pt")
    result = eqm("import", "insightface", weights, "--arch", "mbf", "--out",
                 tmp_path / "run", "--head", tmp_path / "shards")
    assert result.exit_code == 2, result.output
    assert "checkpoint_gpu_0.pt: rank 0 holds 1 class centres" in result.output
    assert not (tmp_path / "run").exists(), "nothing is written for a refused import"


SHARD_CHECK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # 2 GiB of address space
from eqmcli.errors import UserError
from eqmcli.interop.insightface import head_shard_files
try:
    head_shard_files(sys.argv[1])
except UserError as error:
    print(error)
"""


def test_a_shard_claiming_a_huge_rank_is_refused_without_allocating(tmp_path: Path) -> None:
    """Ranks are checked against the number of files: a name claiming rank 10^12 costs nothing
    (it used to build a list of 10^12 ranks: MemoryError at 3.5 GB)."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for rank in (0, 999_999_999_999):
        (shards / f"checkpoint_gpu_{rank}.pt").write_bytes(b"")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SHARD_CHECK, str(shards)], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "is not named checkpoint_gpu_<rank>.pt" in done.stdout  # 12 digits: no rank
    (shards / "checkpoint_gpu_999999999999.pt").rename(shards / "checkpoint_gpu_999999999.pt")
    done = subprocess.run([sys.executable, "-c", SHARD_CHECK, str(shards)], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 1 (checkpoint_gpu_1.pt) is missing" in done.stdout
    assert "the largest rank given is 999999999" in done.stdout


def test_two_files_naming_one_rank_are_refused(tmp_path: Path) -> None:
    from eqmcli.errors import UserError
    from eqmcli.interop.insightface import head_shard_files

    for name in ("checkpoint_gpu_0.pt", "checkpoint_gpu_1.pt", "checkpoint_gpu_01.pt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(UserError, match="both name rank 1"):
        head_shard_files(tmp_path)


def test_weights_that_are_not_finite_are_refused(tmp_path: Path, eqm) -> None:
    state = ArcMobileFaceNet().state_dict()
    state["conv_sep.layers.0.weight"][0, 0, 0, 0] = float("nan")
    state["features.layers.3.running_var"][3] = float("inf")
    torch.save(state, tmp_path / "nan.pth")
    result = eqm("import", "insightface", tmp_path / "nan.pth", "--arch", "mbf", "--out",
                 tmp_path / "run")
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "NaN or infinite value(s)" in said and "Traceback" not in result.output
    assert "conv_sep.layers.0.weight" in said or "features.layers.3.running_var" in said
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("drop", "'layers.3.layers.1.layers.0.layers.1.running_mean' is missing"),
        ("extra", "unknown tensor 'projection.weight'"),
        ("shape", "tensor 'features.layers.2.weight' has shape (128, 512)"),
    ],
)
def test_missing_extra_or_misshaped_tensor_is_refused_by_name(
    tmp_path: Path, change: str, named: str, eqm
) -> None:
    net = randomized(ArcMobileFaceNet())
    state = net.state_dict()
    if change == "drop":
        del state["layers.3.layers.1.layers.0.layers.1.running_mean"]
    elif change == "extra":
        state["projection.weight"] = torch.zeros(4, 4)
    else:
        state["features.layers.2.weight"] = torch.zeros(128, 512)
    torch.save(state, tmp_path / "bad.pth")
    run = tmp_path / "run"
    result = eqm("import", "insightface", tmp_path / "bad.pth", "--arch", "mbf", "--out", run)
    assert result.exit_code == 2 and named in result.output and "Traceback" not in result.output
    assert not run.exists()


def test_missing_batchnorm_counters_are_accepted(tmp_path: Path, eqm) -> None:
    """num_batches_tracked has no effect on the function; some exported files drop it."""
    net = randomized(ArcMobileFaceNet())
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    result = eqm("import", "insightface", tmp_path / "ddp.pth", "--arch", "mbf", "--out",
                 tmp_path / "run")
    assert result.exit_code == 0, result.output


def test_usage_errors_exit_2(tmp_path: Path, eqm) -> None:
    _, weights = save_reference(tmp_path, "mbf")
    result = eqm("import", "insightface", weights, "--arch", "r200", "--out", tmp_path / "a")
    assert result.exit_code == 2, result.output
    assert "--arch 'r200' is not one of r18, r34, r50, r100, mbf" in result.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = eqm("import", "insightface", weights, "--arch", "mbf", "--out",
                 tmp_path / "taken")
    assert result.exit_code == 2 and "not an empty folder" in result.output
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    result = eqm("import", "insightface", tmp_path / "none.pth", "--arch", "mbf", "--out",
                 tmp_path / "b")
    assert result.exit_code == 2 and "none.pth" in result.output


def test_imported_run_carries_our_marker_so_force_recognises_it(
    tmp_path: Path, tiny_recipe_path: Path, eqm
) -> None:
    _, weights = save_reference(tmp_path, "mbf")
    run = tmp_path / "imported"
    result = eqm("import", "insightface", weights, "--arch", "mbf", "--out", run)
    assert result.exit_code == 0, result.output
    marker = run / ".eqm-run"
    assert marker.is_file() and "eqm import insightface" in marker.read_text()
    shutil.rmtree(run / "checkpoints")  # recognised by the marker, not by an older run's layout
    result = eqm("train", tiny_recipe_path, "--out", run, "--force", "--set",
                 "train.epochs=1", "--set", "eval.every_epochs=0", "--no-progress")
    assert result.exit_code == 0, result.output
    assert not (run / "imported.json").exists(), "the imported run was replaced"


def test_export_insightface_is_the_inverse_mapping(tmp_path: Path, eqm) -> None:
    net, weights = save_reference(tmp_path, "mbf")
    run = tmp_path / "run"
    assert eqm("import", "insightface", weights, "--arch", "mbf", "--out", run).exit_code == 0
    result = eqm("export", run, "--insightface", tmp_path / "back.pth")
    assert result.exit_code == 0, result.output
    exported = torch.load(tmp_path / "back.pth", weights_only=True)
    original = net.state_dict()
    assert set(exported) == set(original)
    assert all(torch.equal(exported[k], original[k]) for k in original)
    reloaded = ArcMobileFaceNet()
    reloaded.load_state_dict(exported)  # strict: loads into arcface_torch's module tree


def test_input_size_mismatch_names_the_tensor_and_export_needs_a_target(
    tmp_path: Path, eqm
) -> None:
    _, weights = save_reference(tmp_path, "mbf")
    run = tmp_path / "run"
    result = eqm("import", "insightface", weights, "--arch", "mbf", "--out", run,
                 "--input-size", "64")  # the 7x7 GDC kernel does not fit 64 px
    assert result.exit_code == 2, result.output
    assert "'features.layers.0.layers.0.weight' has shape (512, 1, 7, 7)" in result.output
    assert eqm("import", "insightface", weights, "--arch", "mbf", "--out", run).exit_code == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["input_size"] == [112, 112] and "head" not in state
    result = eqm("export", run)
    assert result.exit_code == 2 and "--onnx" in result.output and "--insightface" in result.output


@pytest.mark.parametrize("out_exists", [False, True])
def test_a_full_disk_during_the_import_leaves_no_half_made_run(
    tmp_path: Path, full_disk, out_exists: bool, eqm
) -> None:
    """Found on a 1 MiB tmpfs: the marker and checkpoints/ stayed behind without a
    checkpoint."""
    torch.save(ArcMobileFaceNet().state_dict(), tmp_path / "mbf.pth")
    out = tmp_path / "run"
    if out_exists:
        out.mkdir()
    full_disk(".last.pt.")
    result = eqm("import", "insightface", tmp_path / "mbf.pth", "--arch", "mbf",
                 "--out", out)
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "no space left on device" in said and "Traceback" not in result.output, said
    assert (list(out.iterdir()) == []) if out_exists else not out.exists()
