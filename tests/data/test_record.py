"""RecordIO: hand-written .rec/.idx files in the published byte format are read back exactly,
and our writer produces the same bytes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from record_files import (
    MAGIC_LE,
    face_dataset,
    hand_encode,
    hand_file,
    hand_payload,
    magic_png,
    png,
)

from eqmcli.data.decode import BadImageLog, decode_image
from eqmcli.data.record import (
    RecordDataset,
    RecordFile,
    build_record_data,
    encode_record,
    folder_to_record,
    is_record_source,
    read_layout,
    record_paths,
    record_to_folder,
    unpack_payload,
)
from eqmcli.data.stats import resolve_source
from eqmcli.errors import UserError
from eqmcli.interop.insightface import training_source
from eqmcli.run.recipe import RecordSource


# ------------------------------------------------------------------------- tests
def test_split_record_bytes_literal() -> None:
    payload = bytes([1, 2, 3, 4]) + MAGIC_LE + bytes([5])
    expected = bytes.fromhex("0a23d7ce 04000020 01020304 0a23d7ce 01000060 05000000")
    assert encode_record(payload) == expected == hand_encode(payload)


def test_read_face_file_with_header_and_split_payload(tmp_path: Path) -> None:
    records, images = face_dataset(tmp_path)
    rec_path = hand_file(tmp_path, records)
    assert hand_encode(records[2][1]).count(MAGIC_LE) == 3  # really split in 3 parts
    rec = RecordFile(rec_path)
    for key, payload in records:
        assert rec.read(key) == payload
    layout = read_layout(rec)
    assert layout.has_header and layout.num_classes == 2
    assert layout.keys.tolist() == [1, 2, 3, 4, 5]
    assert layout.labels.tolist() == [0, 0, 0, 1, 1]
    ds = RecordDataset(rec, layout.keys, layout.labels)
    for i, (data, pixels, label) in enumerate(images):
        image, got_label = ds[i]
        assert got_label == label
        assert image.dtype == torch.uint8 and image.shape == (3, 8, 8)
        assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
        assert unpack_payload(rec.read(i + 1))[2] == data


def test_read_file_without_header(tmp_path: Path) -> None:
    """Shuffled records, no header record; labels as scalar or as a float label array."""
    items = [(7, *png(10), 2), (3, *magic_png(11), 0), (5, *png(12), 1), (9, *png(13), 0)]
    records = [
        (key, hand_payload([float(lab), 0.5] if key == 5 else lab, img, ident=key))
        for key, img, _, lab in items
    ]
    rec = RecordFile(hand_file(tmp_path, records))
    layout = read_layout(rec)
    assert not layout.has_header
    assert layout.keys.tolist() == [7, 3, 5, 9]
    assert layout.labels.tolist() == [2, 0, 1, 0]
    assert layout.num_classes == 3
    ds = RecordDataset(rec, layout.keys, layout.labels)
    for i, (_, _, pixels, lab) in enumerate(items):
        image, label = ds[i]
        assert label == lab
        assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))


def test_writer_matches_hand_written_bytes(tmp_path: Path) -> None:
    records, images = face_dataset(tmp_path)
    hand_file(tmp_path, records, name="hand")
    folder = tmp_path / "folder"
    for k, (data, _, label) in enumerate(images):
        (folder / f"id{label}").mkdir(parents=True, exist_ok=True)
        (folder / f"id{label}" / f"{k:03d}.png").write_bytes(data)
    counts = folder_to_record(folder, tmp_path / "out")
    assert counts["images"] == 5 and counts["classes"] == 2
    assert (tmp_path / "out/train.rec").read_bytes() == (tmp_path / "hand.rec").read_bytes()
    assert (tmp_path / "out/train.idx").read_text() == (tmp_path / "hand.idx").read_text()
    assert (tmp_path / "out/property").read_text().strip() == "2,8,8"
    # and back: record -> folder -> record is byte-identical
    record_to_folder(tmp_path / "out", tmp_path / "back")
    folder_to_record(tmp_path / "back", tmp_path / "again")
    assert (tmp_path / "again/train.rec").read_bytes() == (tmp_path / "hand.rec").read_bytes()


def test_build_record_data_holdout_and_property(tmp_path: Path) -> None:
    records, _ = face_dataset(tmp_path)
    hand_file(tmp_path, records)
    (tmp_path / "property").write_text("2,8,8\n")
    data = build_record_data(RecordSource(root=tmp_path, holdout_fraction=0.5, seed=3))
    assert data.num_classes == 2 and data.image_size == (8, 8)
    assert data.class_sizes.tolist() == [2, 1]
    assert data.test_dataset is not None and len(data.test_dataset) == 2
    same = build_record_data(RecordSource(root=tmp_path, holdout_fraction=0.5, seed=3))
    assert same.dataset.keys.tolist() == data.dataset.keys.tolist()


def test_corrupt_records_counted_listed_and_strict(tmp_path: Path) -> None:
    records, _ = face_dataset(tmp_path)
    rec_path = hand_file(tmp_path, records)
    idx = (tmp_path / "train.idx").read_text().splitlines()
    idx[3] = "3\t2"  # key 3 now points into the middle of a record: bad magic
    (tmp_path / "train.idx").write_text("\n".join(idx) + "\n")
    rec = RecordFile(rec_path)
    keys, labels = np.array([1, 2, 3]), np.array([0, 0, 0])
    log = BadImageLog(tmp_path / "bad_images.txt")
    ds = RecordDataset(rec, keys, labels, bad_log=log)
    image, label = ds[2]  # substituted by another image of class 0
    assert label == 0 and image.shape == (3, 8, 8)
    assert log.count == 1 and log.names() == [f"{rec_path}#3"]
    strict = RecordDataset(rec, keys, labels, bad_log=BadImageLog(strict=True))
    with pytest.raises(UserError, match="#3"):
        strict[2]


def test_truncated_file_and_bad_inputs(tmp_path: Path) -> None:
    records, _ = face_dataset(tmp_path)
    rec_path = hand_file(tmp_path, records)
    data = rec_path.read_bytes()
    rec_path.write_bytes(data[: len(data) - 20])  # cut the last identity record short
    rec = RecordFile(rec_path)
    with pytest.raises(Exception, match="truncated"):
        rec.read(7)
    with pytest.raises(UserError, match="not found"):
        RecordFile(tmp_path / "missing.rec")
    (tmp_path / "train.idx").write_text("0\tabc\n")
    with pytest.raises(UserError, match="train.idx:1"):
        RecordFile(rec_path)


def test_reader_pickles_and_reopens(tmp_path: Path) -> None:
    records, images = face_dataset(tmp_path)
    rec = RecordFile(hand_file(tmp_path, records))
    ds = RecordDataset(rec, np.array([1, 4]), np.array([0, 1]))
    ds[0]  # opens a descriptor in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.rec._fd is None
    assert torch.equal(clone[1][0], decode_image(images[3][0]))


def test_one_rule_says_what_is_a_record_source_for_stats_convert_and_import(tmp_path: Path) -> None:
    """A `.rec` file, or a folder holding one, is RecordIO data (`eqm data stats`,
    `eqm data convert` and `eqm import --data` alike); a folder of images is not."""
    named = tmp_path / "named"
    named.mkdir()
    (named / "faces.rec").write_bytes(b"")
    (named / "faces.idx").write_text("")
    images = tmp_path / "images"
    (images / "id0").mkdir(parents=True)
    assert is_record_source(named) and is_record_source(named / "faces.rec")
    assert not is_record_source(images) and not is_record_source(tmp_path / "absent")
    assert resolve_source(named).kind == training_source(named).kind == "record"
    assert resolve_source(images).kind == training_source(images).kind == "image-folder"
    assert record_paths(named)[:2] == (named / "faces.rec", named / "faces.idx")


def test_a_record_folder_without_its_index_or_with_two_recs_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "train.rec").write_bytes(b"")
    assert training_source(tmp_path).kind == "record"
    with pytest.raises(UserError, match=r"record index not found: .*train\.idx"):
        RecordFile(*record_paths(tmp_path)[:2])
    (tmp_path / "train.rec").rename(tmp_path / "a.rec")
    (tmp_path / "b.rec").write_bytes(b"")
    with pytest.raises(UserError, match=r"holds 2 \.rec files and no train\.rec"):
        record_paths(tmp_path)
