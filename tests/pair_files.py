"""Verification pair files for the evaluation tests: JPEG bytes, a published-style `.bin`,
and a pairs list one of whose images is gone (`PAIRS` pairs, `LACKING` the ones it breaks)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from PIL import Image

PAIRS = 20
LACKING = [k for k in range(PAIRS) if 3 in (k % 6, (k + 1) % 6)]  # pairs naming 3.jpg


def jpeg_bytes(color: tuple[int, int, int], size: int = 32, quality: int = 75) -> bytes:
    """A `size` x `size` one-colour JPEG."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_bin(path: Path, pairs: int = 20, size: int = 32) -> Path:
    """An InsightFace `.bin` of `pairs` pairs of distinct one-colour `size` px JPEGs (matched
    every other pair), pickled as published."""
    bins = [jpeg_bytes(((13 * i) % 256, (71 * i) % 256, 90), size) for i in range(2 * pairs)]
    issame = [k % 2 == 0 for k in range(pairs)]
    path.write_bytes(pickle.dumps((bins, issame), protocol=2))
    return path


def write_pairs_missing_an_image(folder: Path) -> Path:
    """`folder/pairs.txt`: `PAIRS` pairs over 6 images of `folder`; image 3.jpg, named by
    the pairs in `LACKING`, is gone."""
    folder.mkdir()
    for index in range(6):
        Image.new("RGB", (24, 24), (40 * index, 200 - 30 * index, 90)).save(
            folder / f"{index}.jpg")
    lines = [f"{k % 6}.jpg {(k + 1) % 6}.jpg {k % 2}" for k in range(PAIRS)]
    (folder / "pairs.txt").write_text("\n".join(lines) + "\n")
    (folder / "3.jpg").unlink()
    return folder / "pairs.txt"
