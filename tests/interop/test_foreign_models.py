"""Models from elsewhere (issue 19 item 3): an ONNX model's preprocessing from --mean/--std/
--bgr or its metadata (said in one line when assumed), .bin files for --pairs, and one
sentence for an ONNX model with no set to evaluate or no class centres to analyze."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pair_files import write_bin
from PIL import Image
from typer.testing import Result

COLOUR = (200, 100, 50)  # RGB of the test image


def _channel_means_onnx(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """An 8x8 ONNX "embedding model" whose output is its input's per-channel mean: the
    embedding of a one-colour image shows exactly the preprocessing it was given."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1)],
        "channel_means",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def _embed_one(
    eqm: Callable[..., Result], tmp_path: Path, model: Path, *flags: str
) -> tuple[np.ndarray, str]:
    Image.new("RGB", (8, 8), COLOUR).save(tmp_path / "face.png")
    out = tmp_path / "features.npy"
    result = eqm("embed", model, tmp_path / "face.png", "--out", out, "--raw", *flags)
    assert result.exit_code == 0, result.output
    return np.load(out)[0], result.output


def test_an_onnx_model_without_metadata_gets_eqms_preprocessing_and_says_so(tmp_path, eqm):
    row, output = _embed_one(eqm, tmp_path, _channel_means_onnx(tmp_path / "foreign.onnx"))
    np.testing.assert_allclose(row, (np.array(COLOUR) / 255 - 0.5) / 0.5, atol=1e-6)
    assert "records no preprocessing: assumed RGB, (x/255 - 0.5)/0.5" in " ".join(output.split())


def test_mean_std_and_bgr_flags_set_an_onnx_models_preprocessing(tmp_path, eqm):
    model = _channel_means_onnx(tmp_path / "foreign.onnx")
    mean, std = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)  # ImageNet's, in BGR order
    row, output = _embed_one(eqm, tmp_path, model, "--mean", ",".join(map(str, mean)),
                             "--std", ",".join(map(str, std)), "--bgr")
    expected = (np.array(COLOUR[::-1]) / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(row, expected, atol=1e-5)
    assert "assumed" not in output


def test_the_preprocessing_in_an_onnx_models_metadata_is_applied(tmp_path, eqm):
    metadata = {"eqm.color_order": "BGR", "eqm.mean": "0.5,0.4,0.3", "eqm.std": "0.25"}
    model = _channel_means_onnx(tmp_path / "described.onnx", metadata)
    row, output = _embed_one(eqm, tmp_path, model)
    expected = (np.array(COLOUR[::-1]) / 255 - np.array([0.5, 0.4, 0.3])) / 0.25
    np.testing.assert_allclose(row, expected, atol=1e-5)
    assert "assumed" not in output


def test_preprocessing_flags_are_checked_in_one_sentence(tmp_path, untrained_run, eqm):
    model = _channel_means_onnx(tmp_path / "foreign.onnx")
    Image.new("RGB", (8, 8), COLOUR).save(tmp_path / "face.png")
    for flags, message in ((("--mean", "127.5"), "is not a fraction of 255"),
                           (("--std", "0"), "is not a fraction of 255"),
                           (("--mean", "0.1,0.2"), "one number or three")):
        result = eqm("embed", model, tmp_path / "face.png", "--out", tmp_path / "f.npy", *flags)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    result = eqm("eval", untrained_run, "--bgr")
    assert result.exit_code == 2 and "apply to .onnx models only" in result.output


def test_eval_of_an_onnx_model_on_a_bin_records_the_assumed_preprocessing(tmp_path, eqm):
    model = _channel_means_onnx(tmp_path / "foreign.onnx")
    pairs = write_bin(tmp_path / "heldout.bin", size=8)
    result = eqm("eval", model, "--pairs", pairs, "--no-flip")
    assert result.exit_code == 0, result.output
    assert "records no preprocessing" in result.output
    written = json.loads((tmp_path / "foreign.onnx.eval" / "heldout.json").read_text())
    assert written["pairs"] == 20 and written["preprocessing"]["source"] == "assumed"
    result = eqm("eval", model, "--pairs", pairs, "--images-root", tmp_path)
    assert result.exit_code == 2 and "--images-root does not apply" in result.output


def test_an_onnx_model_with_no_set_or_centres_is_one_sentence(tmp_path, eqm):
    model = _channel_means_onnx(tmp_path / "foreign.onnx")
    result = eqm("eval", model)
    assert result.exit_code == 2 and "names no verification set" in result.output
    assert "--pairs FILE" in result.output and "eval.sets is empty" not in result.output
    result = eqm("analyze", model)
    assert result.exit_code == 2 and "no class centres" in result.output
    assert "weights_only" not in result.output and "Traceback" not in result.output
