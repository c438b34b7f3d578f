"""RecordIO files written by hand in the published dmlc byte layout, independently of
`eqmcli.data.record`, and the small images they hold: what the record tests compare with."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

MAGIC_LE = bytes.fromhex("0a23d7ce")  # 0xced7230a, little-endian


def hand_encode(payload: bytes) -> bytes:
    """One record exactly as dmlc RecordIO lays it out, written without the module."""
    cuts = [i for i in range(0, len(payload) // 4 * 4, 4) if payload[i : i + 4] == MAGIC_LE]
    pieces = []
    begin = 0
    for cut in cuts:
        pieces.append(payload[begin:cut])
        begin = cut + 4
    pieces.append(payload[begin:])
    flags = [0] if len(pieces) == 1 else [1] + [2] * (len(pieces) - 2) + [3]
    out = b""
    for flag, piece in zip(flags, pieces, strict=True):
        out += MAGIC_LE + struct.pack("<I", flag * 2**29 + len(piece)) + piece
    pad = (4 - len(payload) % 4) % 4
    return out + b"\x00" * pad


def hand_payload(label, image: bytes = b"", ident: int = 0) -> bytes:
    """IRHeader 'IfQQ' (+ float32 labels when the label is a list) + image."""
    if isinstance(label, list):
        return struct.pack("<IfQQ", len(label), 0.0, ident, 0) + struct.pack(
            f"<{len(label)}f", *label
        ) + image
    return struct.pack("<IfQQ", 0, float(label), ident, 0) + image


def hand_file(tmp: Path, records: list[tuple[int, bytes]], name: str = "train") -> Path:
    rec, idx = b"", ""
    for key, payload in records:
        idx += f"{key}\t{len(rec)}\n"
        rec += hand_encode(payload)
    (tmp / f"{name}.rec").write_bytes(rec)
    (tmp / f"{name}.idx").write_text(idx)
    return tmp / f"{name}.rec"


def png(seed: int, size: int = 8, trailer: bytes = b"") -> tuple[bytes, np.ndarray]:
    """A PNG (lossless, so pixels compare exactly) of random RGB content, plus its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue() + trailer, pixels


def magic_png(seed: int) -> tuple[bytes, np.ndarray]:
    """A PNG followed by trailing bytes that put the magic at 4-aligned payload offsets (twice,
    so the record has first, middle and last parts); PIL ignores data after IEND."""
    data, pixels = png(seed)
    pad = b"\x00" * ((-(24 + len(data))) % 4)  # payload = 24-byte header + image
    return data + pad + MAGIC_LE + b"midl" + MAGIC_LE + b"end", pixels


def face_dataset(tmp: Path) -> tuple[list[tuple[int, bytes]], list[tuple[bytes, np.ndarray, int]]]:
    """Records of a face data set: header, 5 images of 2 classes (one with the magic), ids."""
    images = [(*png(0), 0), (*magic_png(1), 0), (*png(2), 0), (*png(3), 1), (*png(4), 1)]
    n, c = len(images), 2
    a = n + 1
    records = [(0, hand_payload([float(a), float(a + c)], ident=0))]
    records += [(k, hand_payload(lab, img, ident=k)) for k, (img, _, lab) in enumerate(images, 1)]
    records += [(a, hand_payload([1.0, 4.0], ident=a))]  # class 0: keys 1..3
    records += [(a + 1, hand_payload([4.0, 6.0], ident=a + 1))]  # class 1: keys 4..5
    return records, images
