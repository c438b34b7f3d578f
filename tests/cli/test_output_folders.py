"""`eqm embed --out` and `eqm export --onnx/--insightface` create the folders their output
file is to go in; a file in the way is one sentence, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from interop_helpers import import_mbf_run, write_images


def test_embed_creates_the_folders_of_out(tmp_path: Path, tiny_run: Path, eqm) -> None:
    write_images(tmp_path / "faces" / "a", 2, size=24)
    out = tmp_path / "new" / "deeper" / "features.npy"
    result = eqm("embed", tiny_run, tmp_path / "faces", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert np.load(out).shape[0] == 2 and out.with_suffix(".paths.txt").is_file()


def test_embed_with_a_file_in_the_way_says_so(tmp_path: Path, tiny_run: Path, eqm) -> None:
    write_images(tmp_path / "faces" / "a", 1, size=24)
    (tmp_path / "blocker").write_text("a file, not a folder")
    result = eqm("embed", tiny_run, tmp_path / "faces", "--out",
                 tmp_path / "blocker" / "features.npy", "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "a file is in the way" in result.output and "Traceback" not in result.output
    assert (tmp_path / "blocker").read_text() == "a file, not a folder"


def test_export_creates_the_folders_of_its_files(tmp_path: Path, eqm) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    run = import_mbf_run(tmp_path)  # arcface_torch has a MobileFaceNet, no tiny CNN
    onnx_file = tmp_path / "models" / "onnx" / "mbf.onnx"
    weights = tmp_path / "models" / "pth" / "backbone.pth"
    result = eqm("export", run, "--onnx", onnx_file, "--insightface", weights)
    assert result.exit_code == 0, result.output
    assert onnx_file.stat().st_size > 0 and weights.stat().st_size > 0
