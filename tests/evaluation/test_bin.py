"""InsightFace `.bin` verification files: published format, restricted unpickler, make-bin."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from pair_files import jpeg_bytes

from eqmcli.errors import UserError
from eqmcli.evaluation.pair_sets import load_bin_pickle, read_bin


def _colors(n: int) -> list[tuple[int, int, int]]:
    """Distinct flat colors, far enough apart to survive JPEG."""
    return [((37 * i) % 256, (91 * i + 40) % 256, (151 * i + 80) % 256) for i in range(n)]


def _published_bin(path: Path, pairs: int = 12) -> tuple[list[tuple[int, int, int]], list[bool]]:
    colors = _colors(2 * pairs)
    bins = [jpeg_bytes(c, size=8, quality=95) for c in colors]
    issame = [k % 3 != 0 for k in range(pairs)]
    path.write_bytes(pickle.dumps((bins, issame), protocol=2))  # exactly as published
    return colors, issame


def test_bin_read_in_order_with_labels(tmp_path: Path) -> None:
    path = tmp_path / "lfw.bin"
    colors, issame = _published_bin(path)
    vset = read_bin(path)
    assert vset.name == "lfw" and vset.folds == 10
    assert vset.issame.tolist() == issame
    assert vset.pairs.tolist() == [[2 * k, 2 * k + 1] for k in range(len(issame))]
    for k, color in enumerate(colors):
        image, _ = vset.images[k]
        assert image.dtype == torch.uint8 and image.shape == (3, 8, 8)
        mean = image.float().mean(dim=(1, 2)).numpy()
        np.testing.assert_allclose(mean, color, atol=4)


def test_python2_style_and_numpy_payloads_load(tmp_path: Path) -> None:
    """py2 `str` (no globals), numpy uint8 buffers (cv2.imencode) and np.bool_ labels."""
    colors = _colors(20)
    bins = [np.frombuffer(jpeg_bytes(c, size=8, quality=95), dtype=np.uint8) for c in colors]
    issame = [np.bool_(k % 2 == 0) for k in range(10)]
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(pickle.dumps((bins, issame), protocol=2))
    blobs, labels = load_bin_pickle(path)
    assert blobs[3] == jpeg_bytes(colors[3], size=8, quality=95)
    assert labels.tolist() == [k % 2 == 0 for k in range(10)]
    # Python 2 pickles bytes as BINSTRING opcodes (read back with encoding="bytes").
    py2 = b"\x80\x02]q\x00(U\x03abcq\x01U\x02xyq\x02e]q\x03\x88a\x86q\x04."
    path.write_bytes(py2)
    blobs, labels = load_bin_pickle(path)
    assert blobs == [b"abc", b"xy"] and labels.tolist() == [True]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


class _OpenPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [_Payload, _OpenPayload])
def test_malicious_bin_is_refused_and_runs_nothing(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "lfw.bin"
    images = [jpeg_bytes((1, 2, 3), size=8, quality=95), payload(marker)]
    path.write_bytes(pickle.dumps((images, [True]), protocol=2))
    with pytest.raises(UserError, match="refusing") as info:
        read_bin(path, folds=1)
    assert "system" in str(info.value) or "open" in str(info.value)
    assert not marker.exists()


def test_truncated_and_corrupt_bin(tmp_path: Path) -> None:
    path = tmp_path / "cfp_fp.bin"
    _published_bin(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_bin(path)
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True]), protocol=2))
    with pytest.raises(UserError, match="2 images per pair"):
        read_bin(path, folds=1)
    path.write_bytes(pickle.dumps(([b"not a jpeg", b"x"], [True]), protocol=2))
    vset = read_bin(path, folds=1)
    with pytest.raises(UserError, match="image 0 cannot be decoded"):
        vset.images[0]
    # Raised inside a DataLoader worker, it still reaches the user as one sentence.
    from eqmcli.evaluation.features import extract_embeddings

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(UserError) as info:
        extract_embeddings(
            model, vset.images, device="cpu", input_size=(8, 8), progress=False, num_workers=1
        )
    assert str(info.value).startswith(f"{path}: image 0 cannot be decoded")
    assert "Traceback" not in str(info.value)


def test_make_bin_round_trip(tmp_path: Path, eqm) -> None:
    from PIL import Image

    root = tmp_path / "faces"
    colors = _colors(6)
    for i, color in enumerate(colors):
        (root / f"id{i // 2}").mkdir(parents=True, exist_ok=True)
        fmt = "PNG" if i == 5 else "JPEG"
        Image.new("RGB", (8, 8), color).save(root / f"id{i // 2}" / f"{i}.img", format=fmt)
    lines = [
        f"id{i // 2}/{i}.img id{j // 2}/{j}.img {int(i // 2 == j // 2)}"
        for i in range(6)
        for j in range(6)
        if i < j
    ][:10]
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "mine.bin"
    previous_umask = os.umask(0o022)
    try:
        result = eqm("data", "make-bin", str(root), str(pairs_file),
                     str(out))
    finally:
        os.umask(previous_umask)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o644  # the umask's mode, not mkstemp's 0600
    raw = out.read_bytes()
    assert raw[:2] == b"\x80\x02"  # pickle protocol 2
    bins, issame = pickle.loads(raw, encoding="bytes")
    assert len(bins) == 20 and issame == [line.endswith("1") for line in lines]
    assert bins[0] == (root / "id0" / "0.img").read_bytes()  # JPEG copied byte for byte
    vset = read_bin(out)
    assert vset.issame.tolist() == issame
    for k, line in enumerate(lines):
        a = int(line.split()[0].split("/")[1].split(".")[0])
        mean = vset.images[2 * k][0].float().mean(dim=(1, 2)).numpy()
        np.testing.assert_allclose(mean, colors[a], atol=4)
