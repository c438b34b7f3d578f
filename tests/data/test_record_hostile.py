"""Damaged and hostile RecordIO files: one sentence naming the file and record, refused
before anything is allocated for what the file merely claims."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from record_files import face_dataset, hand_file, png

from eqmcli.data.record import (
    CorruptRecordError,
    RecordFile,
    RecordWriter,
    pack_payload,
    read_layout,
    record_to_folder,
)
from eqmcli.errors import UserError


def layout_error(root: Path, prop: str | None = None) -> str:
    """The `UserError` of reading the layout of ``root/train.rec`` (with ``property``)."""
    if prop is not None:
        (root / "property").write_text(prop)
    rec = RecordFile(root / "train.rec")
    with pytest.raises(UserError) as info:
        read_layout(rec, root / "property")
    assert "\n" not in str(info.value)
    return str(info.value)


def labelled_file(root: Path, labels: list[float]) -> Path:
    """A file without header record: one PNG per label, the label in the IRHeader."""
    with RecordWriter(root / "train.rec") as writer:
        for key, label in enumerate(labels):
            writer.write(key, pack_payload(label, png(key)[0], id=key))
    return root / "train.rec"


def test_header_claiming_two_billion_images_is_refused(tmp_path: Path) -> None:
    records, _ = face_dataset(tmp_path)
    records[0] = (0, pack_payload([2.0**31, 2.0**31 + 2]))
    hand_file(tmp_path, records)
    message = layout_error(tmp_path)
    assert "claims 2,147,483,647 images" in message and "8 records" in message


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_header_with_non_finite_counts_is_refused(tmp_path: Path, bad: str) -> None:
    records, _ = face_dataset(tmp_path)
    records[0] = (0, pack_payload([float(bad), 8.0]))
    hand_file(tmp_path, records)
    assert "record 0 (the header)" in layout_error(tmp_path)


def test_property_claiming_a_hundred_million_classes_is_refused(tmp_path: Path) -> None:
    records, _ = face_dataset(tmp_path)
    hand_file(tmp_path, records)
    message = layout_error(tmp_path, "100000000,112,112\n")
    assert "100,000,000 classes" in message and "8 records" in message
    assert "property" in layout_error(tmp_path, "2,112,99999\n")


@pytest.mark.parametrize("label", [float("nan"), float("inf"), 1e30, -3.0, 2.5])
def test_labels_that_are_not_class_numbers_name_the_record(tmp_path: Path, label: float) -> None:
    labelled_file(tmp_path, [0.0, 1.0, label, 0.0])
    message = layout_error(tmp_path)
    assert "record 2 is corrupt" in message and "not a class number" in message


def test_label_beyond_property_count_is_an_error_not_a_wider_classifier(tmp_path: Path) -> None:
    labelled_file(tmp_path, [0.0, 1.0, 5.0, 0.0, 1.0, 2.0, 3.0])
    message = layout_error(tmp_path, "3,8,8\n")
    assert "record 2 has class 5" in message and "lists 3 classes" in message


def test_label_beyond_the_header_identities_is_an_error(tmp_path: Path) -> None:
    records, _ = face_dataset(tmp_path)
    records = records[:-2]  # drop the identity records: labels are read from the images
    key, _ = records[3]
    records[3] = (key, pack_payload(1.0 + 1, png(3)[0], id=key))  # class 2 of 2 identities
    hand_file(tmp_path, records)
    assert "record 3 has class 2 but record 0 lists 2 identities" in layout_error(tmp_path)


def test_labels_beyond_the_records_are_refused(tmp_path: Path) -> None:
    labelled_file(tmp_path, [0.0, 1.0, 9_000_000.0])
    assert "9,000,001 classes cannot come from a file of 3 records" in layout_error(tmp_path)


def test_index_pointing_an_image_at_an_identity_record_is_refused(tmp_path: Path) -> None:
    records, _ = face_dataset(tmp_path)
    hand_file(tmp_path, records)
    lines = (tmp_path / "train.idx").read_text().splitlines()
    identity_offset = lines[6].split("\t")[1]
    lines[2] = f"2\t{identity_offset}"
    (tmp_path / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="points keys 2 and 6 at the same record"):
        RecordFile(tmp_path / "train.rec")
    with pytest.raises(UserError, match="points keys 2 and 6"):
        record_to_folder(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_record_without_image_in_a_headerless_file_is_refused(tmp_path: Path) -> None:
    with RecordWriter(tmp_path / "train.rec") as writer:
        writer.write(0, pack_payload(0.0, png(0)[0]))
        writer.write(1, pack_payload([1.0, 2.0], id=1))  # an identity record, no image
    assert "record 1 is corrupt: it holds no image" in layout_error(tmp_path)


def test_huge_part_length_and_huge_index_numbers(tmp_path: Path) -> None:
    labelled_file(tmp_path, [0.0, 1.0])
    data = bytearray((tmp_path / "train.rec").read_bytes())
    data[4:8] = struct.pack("<I", (1 << 29) - 1)  # record 0 claims 512 MiB
    (tmp_path / "train.rec").write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match="claims 536,870,911 bytes"):
        RecordFile(tmp_path / "train.rec").read(0)
    (tmp_path / "train.idx").write_text(f"{10**25}\t0\n")
    with pytest.raises(UserError, match="beyond 64 bits"):
        RecordFile(tmp_path / "train.rec")
    (tmp_path / "train.idx").write_text("0\t0\n" * 10_000)
    with pytest.raises(UserError, match="larger than an index"):
        RecordFile(tmp_path / "train.rec")


def test_stats_of_a_hostile_record_exits_2_with_one_sentence(tmp_path: Path, eqm) -> None:
    labelled_file(tmp_path, [0.0, float("nan")])
    result = eqm("data", "stats", str(tmp_path))
    assert result.exit_code == 2
    assert "record 1 is corrupt" in result.output and "Traceback" not in result.output
