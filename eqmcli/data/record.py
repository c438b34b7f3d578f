"""InsightFace RecordIO (``train.rec`` + ``train.idx`` + ``property``) in pure Python.

Format (docs/reference.md §2; mxnet/dmlc RecordIO as used by InsightFace):

- ``.idx``: text lines ``key<TAB>byte_offset``.
- ``.rec``: records of ``uint32 magic 0xced7230a``, ``uint32 lrecord`` (low 29 bits the part
  length in bytes, top 3 bits the continuation flag: 0 whole, 1 first, 2 middle, 3 last),
  then the part, zero-padded to a multiple of 4 bytes. A writer scans the payload at every
  4-byte-aligned offset; where the 4 bytes equal the magic it ends the current part there
  and drops those 4 bytes, so a reader rebuilds the payload by joining the parts with the
  magic bytes in between. Padding follows the last part only (the others are 4-aligned).
- payload: ``struct '<IfQQ'`` = (flag, label float32, id uint64, id2 uint64), then ``flag``
  float32 labels when ``flag > 0``, then the encoded image (JPEG).
- Face data sets: record 0 has flag 2 and labels (a, b): records 1..a-1 are images (label =
  class), records a..b-1 one per identity (labels = first and one-past-last image key).
  Files without that header record (e.g. shuffled ones) take every indexed record as an
  image and its label from the record. ``property`` holds ``num_classes,H,W``.

The reader keeps no open file across processes: the handle is opened lazily, dropped when
pickled, and reopened when the process id changes (fork), so each DataLoader worker reads
through its own descriptor with ``os.pread`` (position-independent).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from eqmcli.data.decode import BadImageLog, DecodeError, ImageSize, decode_image, pixel_size
from eqmcli.data.image_folder import (
    SubstitutingDataset,
    probe_image_size,
    scan_image_folder,
    split_holdout,
)
from eqmcli.data.staging import refuse_incomplete, staged_output_dir
from eqmcli.data.trainset import TrainData
from eqmcli.errors import UserError, shown

if TYPE_CHECKING:
    from eqmcli.run.recipe import RecordSource

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2 (24 bytes, as mxnet's native 'IfQQ')
IR_SIZE = _IR.size
_IDX_LINES = re.compile(r"(?:[0-9]+\t[0-9]+\r?\n)*(?:[0-9]+\t[0-9]+\r?\n?)?")
_MAX_IDX_LINE = 42  # bytes of the longest 'key<TAB>offset' line (two 20-digit numbers)
MIN_RECORD_BYTES = 8 + IR_SIZE  # a record's magic and length words, then its header
MAX_LABEL = 2**24  # float32 labels hold every integer class number below this exactly
MAX_PROPERTY_SIDE = 4096  # pixels


class CorruptRecordError(DecodeError):
    """A record that cannot be read: bad magic, truncated part, bad continuation flag."""


@dataclass(frozen=True)
class IRHeader:
    """The image-record header: ``flag`` extra labels follow it when ``flag > 0``."""

    flag: int
    label: float
    id: int
    id2: int


# ------------------------------------------------------------------ payload (IRHeader)
def pack_payload(
    label: float | Sequence[float], image: bytes = b"", *, id: int = 0, id2: int = 0
) -> bytes:
    """Pack one payload as mxnet's ``recordio.pack``: a scalar label gives flag 0 and the label
    in the header; a sequence gives flag ``len(label)``, header label 0 and float32 labels."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        return _IR.pack(0, float(label), id, id2) + image
    values = np.asarray(label, dtype="<f4").ravel()
    return _IR.pack(values.size, 0.0, id, id2) + values.tobytes() + image


def unpack_payload(payload: bytes) -> tuple[IRHeader, np.ndarray, bytes]:
    """Split a payload into (header, float32 labels (``flag`` values, maybe empty), image)."""
    if len(payload) < IR_SIZE:
        raise CorruptRecordError(f"payload of {len(payload)} bytes is shorter than its header")
    header = IRHeader(*_IR.unpack_from(payload))
    end = IR_SIZE + 4 * header.flag
    if len(payload) < end:
        raise CorruptRecordError(f"payload too short for its {header.flag} labels")
    labels = np.frombuffer(payload, dtype="<f4", count=header.flag, offset=IR_SIZE)
    return header, labels.astype(np.float32), payload[end:]


def record_label(header: IRHeader, labels: np.ndarray) -> int:
    """The class of an image record: the first extra label when present, else the header's.

    Raises `CorruptRecordError` unless it is a whole number in ``[0, MAX_LABEL)`` (a NaN,
    an infinity or 1e30 is damage, not a class).
    """
    value = float(labels[0]) if header.flag > 0 else float(header.label)
    if not (math.isfinite(value) and value.is_integer() and 0 <= value < MAX_LABEL):
        raise CorruptRecordError(f"label {value:g} is not a class number in [0, {MAX_LABEL:,})")
    return int(value)


# ------------------------------------------------------------------------- reading
def read_index(idx_path: str | Path, rec_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``.idx`` file into (keys, byte offsets), both int64, in file order.

    With ``rec_size`` (bytes of the ``.rec``), an index longer than that file could need
    (a record takes at least 8 bytes) is refused before it is read.
    """
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        raise UserError(f"record index not found: {idx_path}")
    if rec_size is not None and idx_path.stat().st_size > _MAX_IDX_LINE * (rec_size // 8 + 1):
        raise UserError(
            f"{idx_path} is larger than an index of its {rec_size:,}-byte record file can be"
        )
    try:
        text = idx_path.read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        raise UserError(f"{idx_path}: not an index (a non-ASCII byte at {exc.start})") from None
    try:
        return _parse_index(text, idx_path)
    except OverflowError:
        raise UserError(f"{idx_path}: a key or offset beyond 64 bits") from None


def _parse_index(text: str, idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    if _IDX_LINES.fullmatch(text):  # fast path (MS1M's 5.8M lines in ~2 s)
        table = np.asarray(text.split(), dtype=np.int64).reshape(-1, 2)
        return table[:, 0].copy(), table[:, 1].copy()
    keys: list[int] = []
    offsets: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            key, offset = line.split("\t")
            keys.append(int(key))
            offsets.append(int(offset))
        except ValueError:
            raise UserError(
                f"{idx_path}:{number}: expected 'key<TAB>offset', got {shown(line)}"
            ) from None
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


class RecordFile:
    """Random-access reader of a ``.rec`` through its ``.idx`` (process- and pickle-safe)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise UserError(f"record file not found: {self.rec_path}")
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self.size = self.rec_path.stat().st_size
        self.keys, self.offsets = read_index(self.idx_path, self.size)
        bad = (self.offsets < 0) | (self.offsets + 8 > self.size)
        if bad.any():
            key = int(self.keys[np.argmax(bad)])
            raise UserError(
                f"{self.idx_path}: offset of key {key} lies past the end of {self.rec_path}"
            )
        # key -> offset through sorted numpy arrays, not a dict: 5.8M keys (MS1M) stay ~90 MB
        # instead of ~600 MB of Python objects copied into every worker process
        order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[order]
        self._sorted_offsets = self.offsets[order]
        self._refuse_shared_entries(order)

    def _refuse_shared_entries(self, order: np.ndarray) -> None:
        """Two index lines for one key, or two keys at one offset, are a damaged index (e.g. an
        image key pointing at an identity record): refused, naming both keys."""
        repeated = np.flatnonzero(self._sorted_keys[1:] == self._sorted_keys[:-1])
        if repeated.size:
            key = int(self._sorted_keys[repeated[0]])
            raise UserError(f"{self.idx_path} lists key {key} twice")
        by_offset = np.argsort(self.offsets, kind="stable")
        sorted_offsets = self.offsets[by_offset]
        shared = np.flatnonzero(sorted_offsets[1:] == sorted_offsets[:-1])
        if shared.size:
            first, second = self.keys[by_offset[shared[0]]], self.keys[by_offset[shared[0] + 1]]
            raise UserError(
                f"{self.idx_path} points keys {int(first)} and {int(second)} at the same record "
                f"(byte {int(sorted_offsets[shared[0]])})"
            )
        self._fd: int | None = None
        self._pid = -1

    # -- process safety: one descriptor per process, never pickled
    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        """Close this process's descriptor (reopened on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = -1
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __len__(self) -> int:
        return len(self.keys)

    def offset_of(self, key: int) -> int | None:
        """Byte offset of record ``key``, or None when the index has no such key."""
        i = int(np.searchsorted(self._sorted_keys, key))
        if i < len(self._sorted_keys) and self._sorted_keys[i] == key:
            return int(self._sorted_offsets[i])
        return None

    def __contains__(self, key: int) -> bool:
        return self.offset_of(int(key)) is not None

    def _pread(self, length: int, offset: int) -> bytes:
        data = os.pread(self._file(), length, offset)
        if len(data) != length:
            raise CorruptRecordError(
                f"truncated record at byte {offset}: wanted {length} bytes, file ends"
            )
        return data

    def read_at(self, offset: int) -> bytes:
        """The payload of the record starting at byte ``offset`` (parts reassembled)."""
        parts: list[bytes] = []
        position = offset
        while True:
            magic, lrecord = struct.unpack("<II", self._pread(8, position))
            if magic != MAGIC:
                raise CorruptRecordError(f"bad magic 0x{magic:08x} at byte {position}")
            cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
            if position + 8 + length > self.size:
                raise CorruptRecordError(
                    f"truncated record at byte {position}: it claims {length:,} bytes, the file "
                    f"ends at byte {self.size:,}"
                )
            expected = (0, 1) if not parts else (2, 3)
            if cflag not in expected:
                raise CorruptRecordError(f"unexpected continuation flag {cflag} at byte {position}")
            parts.append(self._pread(length, position + 8) if length else b"")
            position += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                return MAGIC_BYTES.join(parts)

    def read(self, key: int) -> bytes:
        """The payload of record ``key``."""
        offset = self.offset_of(int(key))
        if offset is None:
            raise UserError(f"{self.idx_path} has no record with key {key}")
        return self.read_at(offset)

    def read_header(self, key: int) -> tuple[IRHeader, np.ndarray, int]:
        """Header, extra labels and image length (bytes) of record ``key``, without reading
        its whole image."""
        offset = self.offset_of(int(key))
        if offset is None:
            raise UserError(f"{self.idx_path} has no record with key {key}")
        head = os.pread(self._file(), 8 + IR_SIZE + 8, offset)
        if len(head) >= 8 + IR_SIZE:
            magic, lrecord = struct.unpack_from("<II", head)
            cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
            if magic == MAGIC and cflag == 0 and length >= IR_SIZE:
                header = IRHeader(*_IR.unpack_from(head, 8))
                need = IR_SIZE + 4 * header.flag
                if length >= need and len(head) >= 8 + need:
                    labels = np.frombuffer(head, "<f4", count=header.flag, offset=8 + IR_SIZE)
                    return header, labels.astype(np.float32), length - need
        header, labels, image = unpack_payload(self.read_at(offset))  # multi-part, many labels
        return header, labels, len(image)


# ------------------------------------------------------------------------- writing
def encode_record(payload: bytes) -> bytes:
    """The bytes of one record as written to a ``.rec`` (split at aligned magic, padded)."""
    if len(payload) > _LENGTH_MASK:
        raise ValueError(f"a RecordIO payload must be < 2**29 bytes, got {len(payload)}")
    out = bytearray()
    start = 0
    for i in range(0, len(payload) - 3, 4):
        if payload[i : i + 4] == MAGIC_BYTES:
            out += struct.pack("<II", MAGIC, ((1 if start == 0 else 2) << 29) | (i - start))
            out += payload[start:i]
            start = i + 4
    out += struct.pack("<II", MAGIC, ((3 if start else 0) << 29) | (len(payload) - start))
    out += payload[start:]
    out += b"\0" * (-len(payload) % 4)
    return bytes(out)


class RecordWriter:
    """Append records to a ``.rec`` and their ``key<TAB>offset`` lines to the ``.idx``."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self._rec = open(self.rec_path, "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._idx = open(self.idx_path, "w", newline="\n")  # noqa: SIM115
        self._offset = 0

    def write(self, key: int, payload: bytes) -> None:
        """Write one record (payload from `pack_payload`) under ``key``."""
        data = encode_record(payload)
        self._idx.write(f"{int(key)}\t{self._offset}\n")
        self._rec.write(data)
        self._offset += len(data)

    def close(self) -> None:
        """Flush and close both files."""
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ face data layout
@dataclass
class RecordLayout:
    """What a face ``.rec`` holds: image keys, their labels, class count and image size."""

    keys: np.ndarray  # int64 (N,), image record keys
    labels: np.ndarray  # int64 (N,)
    num_classes: int
    image_size: tuple[int, int] | None  # (H, W) from `property`, None when absent
    has_header: bool


def read_property(path: str | Path) -> tuple[int, int, int] | None:
    """``property`` = ``num_classes,H,W`` -> the three ints, or None when the file is absent.

    Each must be positive and H, W at most `MAX_PROPERTY_SIDE`; the class count is checked
    against the records in `read_layout`.
    """
    path = Path(path)
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        text = handle.read(256).decode("ascii", errors="replace").strip()
    try:
        c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(
            f"{path}: expected 'num_classes,height,width', got {shown(text)}"
        ) from None
    if min(c, h, w) < 1 or max(h, w) > MAX_PROPERTY_SIDE:
        raise UserError(f"{path}: {c},{h},{w} is not a class count and an image size in pixels")
    return c, h, w


def _header_record(rec: RecordFile) -> tuple[int, int] | None:
    """(a, b) from record 0 when it is a face data-set header (flag 2, no image), else None.

    Images are keys 1..a-1 and identities keys a..b-1; counts that the index could not hold
    (or that are no whole numbers) are refused before anything is allocated for them.
    """
    if 0 not in rec:
        return None
    try:
        header, labels, image = unpack_payload(rec.read(0))
    except CorruptRecordError as exc:
        raise UserError(f"{rec.rec_path}: cannot read record 0: {exc}") from None
    if header.flag != 2 or image:
        return None
    first, end = float(labels[0]), float(labels[1])
    if not all(math.isfinite(v) and v.is_integer() for v in (first, end)):
        raise UserError(
            f"{rec.rec_path}: record 0 (the header) holds {first:g}, {end:g}, not record keys"
        )
    a, b = int(first), int(end)
    if not 1 <= a <= b:
        return None
    if a - 1 > len(rec) or b - a > len(rec):
        raise UserError(
            f"{rec.rec_path}: record 0 claims {a - 1:,} images and {b - a:,} identities, but "
            f"{rec.idx_path} lists only {len(rec):,} records"
        )
    return a, b


def read_layout(rec: RecordFile, property_path: str | Path | None = None) -> RecordLayout:
    """Image keys and labels of a face ``.rec``.

    With the header record, images are keys 1..a-1 and identity record ``a + c`` gives the
    key range of class ``c``; without it (or when identity records are missing) every indexed
    record is an image and its header is read for the label (a short read per record).
    The class count is the header's identities, else one past the largest label, raised to
    ``property``'s count; a label beyond the header's or ``property``'s count, or a count
    larger than the index has records, is a `UserError` (never a silently wider classifier).
    """
    prop = read_property(property_path) if property_path is not None else None
    header = _header_record(rec)
    if header is not None:
        a, b = header
        keys = np.arange(1, a, dtype=np.int64)
        labels = _labels_from_identities(rec, a, b)
        if labels is None:
            labels = _labels_from_records(rec, keys)
    else:
        keys = rec.keys.copy()
        labels = _labels_from_records(rec, keys)
    if len(keys) == 0:
        raise UserError(f"{rec.rec_path} holds no image records")
    declared = [(b - a, f"record 0 lists {b - a:,} identities")] if header is not None else []
    if prop is not None:
        declared.append((prop[0], f"{property_path} lists {prop[0]:,} classes"))
    num_classes = _class_count(rec, keys, labels, declared)
    size = (prop[1], prop[2]) if prop is not None else None
    return RecordLayout(keys, labels, num_classes, size, header is not None)


def _class_count(
    rec: RecordFile, keys: np.ndarray, labels: np.ndarray, declared: list[tuple[int, str]]
) -> int:
    """The class count: the largest of the declared counts and one past the largest label."""
    top = int(np.argmax(labels))
    for count, where in declared:
        if labels[top] >= count:
            raise UserError(
                f"{rec.rec_path}: record {int(keys[top])} has class {int(labels[top])} but "
                f"{where}; labels must be below the class count"
            )
    num_classes = max([int(labels[top]) + 1, *(count for count, _ in declared)])
    if num_classes > len(rec):
        raise UserError(
            f"{rec.rec_path}: {num_classes:,} classes cannot come from a file of "
            f"{len(rec):,} records (damaged labels or property?)"
        )
    return num_classes


def _labels_from_identities(rec: RecordFile, a: int, b: int) -> np.ndarray | None:
    """Labels from the identity records a..b-1, or None if they do not tile keys 1..a-1."""
    labels = np.full(a - 1, -1, dtype=np.int64)
    for c, key in enumerate(range(a, b)):
        if key not in rec:
            return None
        try:
            head, values, _ = rec.read_header(key)
        except CorruptRecordError:
            return None
        if head.flag < 2 or not np.isfinite(values[:2]).all():
            return None
        start, end = int(values[0]), int(values[1])
        if not 1 <= start <= end <= a:
            return None
        labels[start - 1 : end - 1] = c
    return labels if (labels >= 0).all() else None


def _labels_from_records(rec: RecordFile, keys: np.ndarray) -> np.ndarray:
    labels = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys.tolist()):
        if key not in rec:
            raise UserError(f"{rec.idx_path} has no record with key {key}")
        try:
            head, values, image_length = rec.read_header(key)
            if image_length == 0:
                raise CorruptRecordError("it holds no image (a header or identity record?)")
            labels[i] = record_label(head, values)
        except CorruptRecordError as exc:
            raise UserError(f"{rec.rec_path}: record {key} is corrupt: {exc}") from None
    return labels


class RecordDataset(SubstitutingDataset):
    """Image records of a ``.rec``: item i = (uint8 (3,H,W) decoded ``keys[i]``, ``labels[i]``).

    A corrupt record or undecodable image is listed as ``<rec path>#<key>`` and substituted
    by another image of the same class (see `SubstitutingDataset`). ``image_size`` (pixels,
    a side or ``(height, width)``): images of another size are resized to it.
    """

    def __init__(
        self,
        rec: RecordFile,
        keys: np.ndarray,
        labels: np.ndarray,
        *,
        image_size: ImageSize | None = None,
        bad_log: BadImageLog | None = None,
    ) -> None:
        super().__init__(labels, bad_log)
        self.rec = rec
        self.keys = np.asarray(keys, dtype=np.int64)
        self.image_size = pixel_size(image_size)

    def _name(self, index: int) -> str:
        return f"{self.rec.rec_path}#{int(self.keys[index])}"

    def _class_name(self, label: int) -> str:
        return f"class {label} of {self.rec.rec_path}"

    def _load(self, index: int) -> torch.Tensor:
        _, _, image = unpack_payload(self.rec.read(int(self.keys[index])))
        return decode_image(image, self.image_size)


def is_record_source(path: Path) -> bool:
    """The one rule for RecordIO data: a ``.rec`` file, or a folder holding a ``.rec`` (read
    by `record_paths`: its ``train.rec``, else its only ``.rec``, with the ``.idx`` beside
    it); any other folder is an image folder."""
    return path.suffix == ".rec" or (path.is_dir() and any(path.glob("*.rec")))


def record_paths(root: str | Path) -> tuple[Path, Path, Path]:
    """(train.rec, train.idx, property) of a record folder; a ``.rec`` path is accepted too."""
    root = Path(root).expanduser()
    if root.suffix == ".rec":
        refuse_incomplete(root.parent)
        return root, root.with_suffix(".idx"), root.parent / "property"
    refuse_incomplete(root)
    if not root.is_dir():
        raise UserError(f"record folder not found: {root}")
    rec = root / "train.rec"
    if not rec.is_file():
        found = sorted(root.glob("*.rec"))
        if len(found) > 1:
            raise UserError(f"{root} holds {len(found)} .rec files and no train.rec; "
                            "name the .rec file to read")
        if not found:
            raise UserError(f"no train.rec in {root}")
        rec = found[0]
    return rec, rec.with_suffix(".idx"), root / "property"


def build_record_data(
    source: RecordSource,
    strict: bool = False,
    bad_images_path: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
) -> TrainData:
    """Open ``source.root`` (train.rec/.idx/property) as a `TrainData`.

    ``class_sizes`` counts training images per class after the per-class hold-out. Every
    image is resized in the loader's workers to ``image_size``: ``source.image_size``, else
    ``input_size`` (the model input the recipe asks for), else ``property``'s (H, W), else
    the size of the first readable image.
    """
    rec_path, idx_path, prop_path = record_paths(source.root)
    rec = RecordFile(rec_path, idx_path)
    layout = read_layout(rec, prop_path)
    train_idx, test_idx = split_holdout(
        layout.labels, layout.num_classes, source.holdout_fraction, source.seed
    )
    bad_log = BadImageLog(bad_images_path, strict=strict)
    size = pixel_size(source.image_size) or pixel_size(input_size) or layout.image_size
    if size is None:
        size = probe_image_size(
            layout.keys[:16].tolist(), lambda key: decode_image(unpack_payload(rec.read(key))[2]),
            str(rec_path),
        )

    def subset(idx: np.ndarray) -> RecordDataset:
        return RecordDataset(
            rec, layout.keys[idx], layout.labels[idx], image_size=size, bad_log=bad_log
        )

    data = TrainData(
        dataset=subset(train_idx),
        num_classes=layout.num_classes,
        image_size=size,
        class_sizes=np.bincount(layout.labels[train_idx], minlength=layout.num_classes).astype(
            np.int64
        ),
        test_dataset=subset(test_idx) if len(test_idx) else None,
    )
    rec.close()  # the datasets reopen lazily in whichever process reads
    return data


# ---------------------------------------------------------------------- conversion
def folder_to_record(folder: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write ``out_dir/train.rec``, ``train.idx`` and ``property`` from an image folder.

    Layout as InsightFace's face data sets: record 0 header (flag 2, labels (N+1, N+1+C)),
    records 1..N the images class by class in `scan_image_folder` order (flag 0, label =
    class, id = key, id2 = 0, the file bytes stored unchanged), then one identity record per
    class (flag 2, labels (first key, one past last key), id = key, no image). ``property``
    is ``C,H,W`` with the size of the first image. The three files appear together or not
    at all (`staged_output_dir`); empty (0-byte) images are refused first, listed
    (`refuse_empty_files`). Returns counts for display.
    """
    classes, files, labels = scan_image_folder(folder)
    folder, out_path = Path(folder), Path(out_dir).expanduser()
    if out_path.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"output {out_path} lies inside the image folder {folder}")
    refuse_empty_files(folder, files)
    n, c = len(files), len(classes)
    try:
        with Image.open(folder / files[0]) as first:
            width, height = first.size
    except Exception as exc:
        raise UserError(f"cannot read image {folder / files[0]}: {exc}") from None
    a = n + 1
    with staged_output_dir(out_path) as staging:
        with RecordWriter(staging / "train.rec", staging / "train.idx") as writer:
            writer.write(0, pack_payload([float(a), float(a + c)], id=0))
            for key, rel in enumerate(files, start=1):
                writer.write(key, pack_payload(float(labels[key - 1]), _read(folder / rel), id=key))
            starts = np.searchsorted(labels, np.arange(c + 1)) + 1
            for cls in range(c):
                key = a + cls
                span = [float(starts[cls]), float(starts[cls + 1])]
                writer.write(key, pack_payload(span, id=key))
        (staging / "property").write_text(f"{c},{height},{width}\n")
    return {"images": n, "classes": c, "height": height, "width": width}


SHOWN_EMPTY = 5


def refuse_empty_files(folder: Path, files: list[str]) -> None:
    """`UserError` listing the images of ``folder`` (relative ``files``) that are empty (0
    bytes): packed, each would be a record without an image, which readers refuse."""
    empty = [name for name in files if _size(folder / name) == 0]
    if empty:
        named = ", ".join(empty[:SHOWN_EMPTY])
        more = f" and {len(empty) - SHOWN_EMPTY} more" if len(empty) > SHOWN_EMPTY else ""
        raise UserError(
            f"{len(empty)} image(s) in {folder} are empty (0 bytes): {named}{more}; nothing was "
            "written: remove or replace them, then convert again"
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


_IMAGE_SUFFIXES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG", ".png"), (b"BM", ".bmp"))


def record_to_folder(rec_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write every image record of ``rec_dir`` to ``out_dir/<class>/<key>.<ext>``.

    Class folders are zero-padded class numbers (so their sorted order is the label order)
    and files are zero-padded record keys; image bytes are written unchanged. The folder
    appears whole or not at all (`staged_output_dir`). A corrupt record, or one without an
    image, raises `UserError` naming its key.
    """
    rec_path, idx_path, prop_path = record_paths(rec_dir)
    rec = RecordFile(rec_path, idx_path)
    layout = read_layout(rec, prop_path)
    class_width = max(len(str(layout.num_classes - 1)), 1)
    key_width = max(len(str(int(layout.keys.max()))), 8)
    with staged_output_dir(out_dir) as staging:
        for key, label in zip(layout.keys.tolist(), layout.labels.tolist(), strict=True):
            try:
                _, _, image = unpack_payload(rec.read(key))
                if not image:
                    raise CorruptRecordError("it holds no image")
            except CorruptRecordError as exc:
                raise UserError(f"{rec_path}: record {key} is corrupt: {exc}") from None
            suffix = next((s for magic, s in _IMAGE_SUFFIXES if image.startswith(magic)), ".img")
            class_dir = staging / f"{label:0{class_width}d}"
            class_dir.mkdir(exist_ok=True)
            (class_dir / f"{key:0{key_width}d}{suffix}").write_bytes(image)
    rec.close()
    return {"images": len(layout.keys), "classes": int(np.unique(layout.labels).size)}


def convert(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Convert between formats, the direction read from ``src``: a record folder (or a
    ``.rec``) becomes an image folder, an image folder becomes ``train.rec``/``.idx``/
    ``property``. ``dst`` must be absent or empty. Returns counts and the direction."""
    src_path = Path(src).expanduser()
    if not src_path.exists():
        raise UserError(f"conversion source not found: {src_path}")
    if is_record_source(src_path):
        return {"direction": "record->folder", **record_to_folder(src_path, dst)}
    return {"direction": "folder->record", **folder_to_record(src_path, dst)}
