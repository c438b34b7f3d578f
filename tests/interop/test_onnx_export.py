"""`eqm export --onnx`, and ONNX models in `eqm eval` / `eqm embed` (the [onnx] extra)."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from interop_helpers import (
    import_mbf_run,
    write_images,
)

from eqmcli.data.transforms import to_model_input
from eqmcli.errors import UserError
from eqmcli.run.rundir import load_trained


@pytest.fixture(scope="module")
def mbf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_mbf_run(tmp_path_factory.mktemp("mbf"))


@pytest.fixture(scope="module")
def mbf_onnx(mbf_run: Path, eqm) -> tuple[Path, str]:
    """``mbf_run`` exported with a dynamic batch size, and the command's output."""
    pytest.importorskip("onnxruntime")
    path = mbf_run.parent / "model.onnx"
    result = eqm("export", mbf_run, "--onnx", path)
    assert result.exit_code == 0, result.output
    return path, result.output


def test_export_parity_with_torch_and_metadata(
    tmp_path: Path, mbf_run: Path, mbf_onnx: tuple[Path, str]
) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path, out = mbf_onnx
    assert "max |Δ| = " in out and "(limit 0.0001)" in out
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["eqm.color_order"] == "RGB"
    assert meta["eqm.normalization"] == "(x / 255 - 0.5) / 0.5"
    assert meta["eqm.input_size"] == "112,112" and meta["eqm.embedding_dim"] == "512"
    assert "backbone: mbf" in meta["eqm.recipe"]
    # an independent check on fresh random images, at a batch size the export did not see
    images = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(7))
    x = to_model_input(images, "cpu")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = load_trained(mbf_run).backbone(x)
    assert got.shape == (3, 512) and float(np.abs(got - expected.numpy()).max()) <= 1e-4
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_embed_with_onnx_matches_torch(
    tmp_path: Path, mbf_run: Path, mbf_onnx: tuple[Path, str], eqm
) -> None:
    write_images(tmp_path / "images", 3, size=112)
    for model, name in ((mbf_onnx[0], "onnx"), (mbf_run, "torch")):
        result = eqm("embed", model, tmp_path / "images", "--out",
                     tmp_path / f"{name}.npy", "--flip", "--device", "cpu")
        assert result.exit_code == 0, result.output
    onnx_rows, torch_rows = np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "torch.npy")
    assert onnx_rows.shape == (3, 512) and np.abs(onnx_rows - torch_rows).max() <= 1e-4


def test_fixed_batch_export_embeds_any_count(tmp_path: Path, tiny_run: Path, eqm) -> None:
    """--batch 2: onnxruntime gets chunks of 2 (the last padded), 5 images in all."""
    pytest.importorskip("onnxruntime")
    path = tmp_path / "fixed.onnx"
    result = eqm("export", tiny_run, "--onnx", path, "--batch", "2")
    assert result.exit_code == 0 and "input 2x3x24x24" in result.output, result.output
    write_images(tmp_path / "images", 5, size=24)
    for model, name in ((path, "onnx"), (tiny_run, "torch")):
        result = eqm("embed", model, tmp_path / "images", "--out",
                     tmp_path / f"{name}.npy", "--device", "cpu")
        assert result.exit_code == 0, result.output
    onnx_rows, torch_rows = np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "torch.npy")
    assert onnx_rows.shape == (5, 16) and np.abs(onnx_rows - torch_rows).max() <= 1e-4


def test_bad_batch_option_is_refused(tmp_path: Path, mbf_run: Path, eqm) -> None:
    pytest.importorskip("onnxruntime")
    result = eqm("export", mbf_run, "--onnx", tmp_path / "m.onnx", "--batch", "many")
    assert result.exit_code == 2, result.output
    assert "--batch must be 'dynamic' or a positive integer" in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_eval_onnx_matches_eval_run(tmp_path: Path, tiny_run_copy: Path, eqm) -> None:
    """A tiny run trained for 1 epoch: `eqm eval model.onnx` == `eqm eval RUN` on its pairs."""
    pytest.importorskip("onnxruntime")
    result = eqm("eval", tiny_run_copy, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    by_torch = json.loads(result.output)["synthetic"]
    model = tmp_path / "model.onnx"
    assert eqm("export", tiny_run_copy, "--onnx", model).exit_code == 0
    result = eqm("eval", model, "--json", "--device", "cpu")  # the stored recipe's pairs
    assert result.exit_code == 0, result.output
    by_onnx = json.loads(result.output)["synthetic"]
    assert by_onnx["pairs"] == by_torch["pairs"] > 0
    assert abs(by_onnx["accuracy"] - by_torch["accuracy"]) * 100 <= 0.1
    assert (tmp_path / "model.onnx.eval" / "synthetic.json").is_file(), "named after the file"


def test_eval_of_a_foreign_onnx_model_asks_for_pairs(
    tmp_path: Path, mbf_onnx: tuple[Path, str], eqm
) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(mbf_onnx[0]))
    del model.metadata_props[:]  # as an ONNX file from another tool: no eqm recipe
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    result = eqm("eval", tmp_path / "foreign.onnx", "--device", "cpu")
    assert result.exit_code == 2 and "--pairs" in result.output and "Traceback" not in result.output


def test_without_the_extra_the_command_says_how_to_install(
    tmp_path: Path, mbf_run: Path, monkeypatch: pytest.MonkeyPatch, eqm
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    result = eqm("export", mbf_run, "--onnx", tmp_path / "m.onnx")
    assert result.exit_code == 2, result.output
    assert 'pip install "eqmcli[onnx]"' in result.output and "Traceback" not in result.output
    from eqmcli.interop.onnx import require_onnx

    with pytest.raises(UserError, match=r"\[onnx\] extra"):
        require_onnx()


def test_requested_opset_is_written_or_refused(tmp_path: Path, tiny_run: Path, eqm) -> None:
    """--opset 17 is what the file holds; an opset the exporter cannot convert to is refused."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    result = eqm("export", tiny_run, "--onnx", tmp_path / "m17.onnx", "--opset", "17")
    assert result.exit_code == 0, result.output
    opsets = {o.domain: o.version for o in onnx.load(str(tmp_path / "m17.onnx")).opset_import}
    assert opsets[""] == 17
    result = eqm("export", tiny_run, "--onnx", tmp_path / "m13.onnx", "--opset", "13")
    assert result.exit_code == 2, result.output
    assert "could not convert" in result.output and "opset 13" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m13.onnx").exists()


@pytest.mark.parametrize("option", ["--onnx", "--insightface"])
def test_export_refuses_to_write_over_the_checkpoint_it_reads(
    tmp_path: Path, mbf_run: Path, option: str, eqm
) -> None:
    last = mbf_run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    for target in (last, mbf_run / "checkpoints" / ".." / "checkpoints" / "last.pt"):
        result = eqm("export", mbf_run, option, target, "--force")
        assert result.exit_code == 2, result.output
        assert "which this command reads" in result.output and "Traceback" not in result.output
    link = tmp_path / "link.pt"
    link.symlink_to(last)
    result = eqm("export", last, option, link, "--force")
    assert result.exit_code == 2 and "which this command reads" in result.output
    assert last.read_bytes() == before


def test_export_onto_an_existing_file_a_folder_or_a_read_only_place_is_one_sentence(
    tmp_path: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch, eqm
) -> None:
    pytest.importorskip("onnxruntime")
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"an unrelated file")
    result = eqm("export", tiny_run, "--onnx", mine)
    assert result.exit_code == 2, result.output
    assert "exists; pass --force to replace it" in " ".join(result.output.split())
    assert mine.read_bytes() == b"an unrelated file"
    result = eqm("export", tiny_run, "--onnx", tmp_path)
    assert result.exit_code == 2, result.output
    assert "is a folder" in result.output and "Traceback" not in result.output

    import eqmcli.atomic

    def read_only(path: object, *args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(eqmcli.atomic.os, "open", read_only)
    result = eqm("export", tiny_run, "--onnx", tmp_path / "new.onnx")
    assert result.exit_code == 2, result.output
    assert "Read-only file system" in result.output and "Traceback" not in result.output
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.onnx"], "nothing left behind"
    result = eqm("export", tiny_run, "--onnx", mine, "--force")
    assert result.exit_code == 0, result.output
    assert mine.read_bytes()[:20] != b"an unrelated file"
