"""Image folders: ordering, labels, held-out split, corrupt images counted/listed/strict."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eqmcli.data.decode import BadImageLog, DecodeError, decode_image, encode_jpeg
from eqmcli.data.image_folder import (
    IMAGE_SUFFIXES,
    ImageFolderDataset,
    build_image_folder_data,
    scan_image_folder,
    split_holdout,
)
from eqmcli.errors import UserError
from eqmcli.evaluation.embed import list_images
from eqmcli.evaluation.ytf.files import FRAME_SUFFIXES
from eqmcli.run.recipe import ImageFolderSource


def make_folder(root: Path, sizes: dict[str, int], size: int = 12) -> Path:
    """root/<name>/<k>.png with a flat colour per image (class index in red, k in green)."""
    for c, (name, n) in enumerate(sorted(sizes.items())):
        (root / name).mkdir(parents=True)
        for k in range(n):
            pixels = np.zeros((size, size, 3), dtype=np.uint8)
            pixels[..., 0], pixels[..., 1] = 10 * c, 10 * k
            Image.fromarray(pixels).save(root / name / f"img{k:02d}.png")
    return root


def test_ordering_and_labels(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "faces", {"bob": 2, "alice": 3, "carol": 1})
    (root / "alice" / "notes.txt").write_text("not an image")
    classes, files, labels = scan_image_folder(root)
    assert classes == ["alice", "bob", "carol"]
    assert files[:3] == ["alice/img00.png", "alice/img01.png", "alice/img02.png"]
    assert labels.tolist() == [0, 0, 0, 1, 1, 2]
    ds = ImageFolderDataset(root, files, labels)
    image, label = ds[4]
    assert image.dtype == torch.uint8 and image.shape == (3, 12, 12) and label == 1
    assert int(image[0, 0, 0]) == 10 and int(image[1, 0, 0]) == 10  # bob, img01
    resized = ImageFolderDataset(root, files, labels, image_size=6)[0][0]
    assert resized.shape == (3, 6, 6)


def test_holdout_is_per_class_and_deterministic() -> None:
    labels = np.repeat(np.arange(4), [10, 5, 1, 20])
    train, test = split_holdout(labels, 4, 0.2, seed=1)
    assert np.bincount(labels[test], minlength=4).tolist() == [2, 1, 0, 4]
    assert sorted([*train, *test]) == list(range(len(labels)))
    again = split_holdout(labels, 4, 0.2, seed=1)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(split_holdout(labels, 4, 0.2, seed=2)[1], test)


def test_build_image_folder_data(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "faces", {"a": 10, "b": 4})
    data = build_image_folder_data(ImageFolderSource(root=root, holdout_fraction=0.25))
    assert data.num_classes == 2 and data.image_size == (12, 12)
    assert data.class_sizes.tolist() == [8, 3]
    assert data.test_dataset is not None and len(data.test_dataset) == 3
    assert len(data.dataset) == 11


def test_corrupt_image_counted_listed_and_strict(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "faces", {"a": 3, "b": 2})
    bad = root / "a" / "img01.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _, files, labels = scan_image_folder(root)
    log = BadImageLog(tmp_path / "run" / "bad_images.txt")
    ds = ImageFolderDataset(root, files, labels, bad_log=log)
    image, label = ds[1]
    assert label == 0 and int(image[1, 0, 0]) == 20  # substituted by img02 of the same class
    ds[1]
    assert log.count == 1
    assert log.names() == [str(bad)]
    assert (tmp_path / "run" / "bad_images.txt").read_text().startswith(f"{bad}\t")
    strict = ImageFolderDataset(root, files, labels, bad_log=BadImageLog(strict=True))
    with pytest.raises(UserError, match="img01.png"):
        strict[1]


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class"):
        scan_image_folder(tmp_path / "empty")
    root = make_folder(tmp_path / "faces", {"a": 1})
    (root / "b").mkdir()
    with pytest.raises(UserError, match="contains no images"):
        scan_image_folder(root)


def test_decode_jpeg_and_garbage() -> None:
    pixels = np.full((16, 16, 3), 128, dtype=np.uint8)
    image = decode_image(encode_jpeg(pixels))
    assert image.shape == (3, 16, 16) and abs(int(image.float().mean()) - 128) <= 2
    gray = Image.fromarray(np.zeros((5, 7), dtype=np.uint8))
    path_bytes = __import__("io").BytesIO()
    gray.save(path_bytes, format="PNG")
    assert decode_image(path_bytes.getvalue()).shape == (3, 5, 7)
    with pytest.raises(DecodeError):
        decode_image(encode_jpeg(pixels)[:50])


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_sixteen_bit_images_are_scaled_to_eight_bits(tmp_path: Path) -> None:
    """A 16-bit grey PNG/TIFF/PGM decodes as round(v / 257), not as a white image (PIL's
    own conversion clips 16-bit values at 255); so does a folder of them in training."""
    wide = (np.arange(12 * 10).reshape(12, 10) * 546).astype(np.uint16)  # 0 .. 64,974
    expected = ((wide.astype(np.int64) + 128) // 257).astype(np.uint8)
    pgm = b"P5\n10 12\n65535\n" + wide.astype(">u2").tobytes()
    for data in (_encoded(Image.fromarray(wide), "PNG"), _encoded(Image.fromarray(wide), "TIFF"),
                 pgm):
        image = decode_image(data)
        assert image.shape == (3, 12, 10)
        assert torch.equal(image[0], torch.from_numpy(expected)), "scaled, not clipped"
        assert torch.equal(image[0], image[2])
    (tmp_path / "faces" / "a").mkdir(parents=True)
    Image.fromarray(wide).save(tmp_path / "faces" / "a" / "x.png")
    dataset = ImageFolderDataset(tmp_path / "faces", ["a/x.png"], np.zeros(1, np.int64))
    assert torch.equal(dataset[0][0][1], torch.from_numpy(expected))


def test_thirty_two_bit_and_float_pixels_are_refused() -> None:
    for array in (np.arange(20, dtype=np.int32).reshape(4, 5),
                  np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)):
        with pytest.raises(DecodeError, match="no known 8-bit scale"):
            decode_image(_encoded(Image.fromarray(array), "TIFF"))


def test_embed_lists_every_suffix_a_training_folder_reads_and_ytf_frames_are_a_subset(tmp_path):
    names = [f"face{suffix}" for suffix in IMAGE_SUFFIXES] + ["notes.txt", "face.PGM"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    listed = {path.name for path in list_images(tmp_path)}
    assert listed == set(names) - {"notes.txt"}
    assert set(FRAME_SUFFIXES) < set(IMAGE_SUFFIXES)
