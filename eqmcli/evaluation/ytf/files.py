"""YouTube Faces (Wolf, Hassner & Maoz, CVPR 2011) as distributed.

```
<data root>/YouTubeFaces/                 (or <data root>/YTF/, or the folder itself)
  aligned_images_DB/<person>/<video>/aligned_detect_<video>.<frame>.jpg
  splits.txt                              (or meta_data/splits.txt)
```

``splits.txt`` is comma separated with a header row; its columns are found by name, in
any order, other columns ignored. The published file's rows are ``split number, pair id,
first name, second name, is same`` (``1, 1, Person_A/0, Person_A/2, 1``; values after a
comma start with a space); the names that copies in circulation give the columns are
accepted too (`COLUMN_NAMES`), compared without case, ``_``/``-`` and repeated spaces:
``split number`` (a positive integer, 1-10 in the official file), ``first name`` and
``second name`` (``<person>/<video>``) and ``is same`` (1 or 0; also ``is same person``,
``same``, ``label``...). The official file lists 5,000 video pairs, 500 per split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqmcli.errors import UserError, shown

FRAMES_FOLDER = "aligned_images_DB"
#: Each column the reader needs, and the header names it is known by (normalized).
COLUMN_NAMES = {
    "split number": ("split number", "split", "split id", "split no", "fold", "fold number"),
    "first name": ("first name", "first video", "first", "name 1", "video 1", "first video name"),
    "second name": (
        "second name", "second video", "second", "name 2", "video 2", "second video name",
    ),
    "is same": (
        "is same", "is same person", "is the same", "is the same person", "same",
        "same person", "issame", "label",
    ),
}
# deliberately narrower than `IMAGE_SUFFIXES`: the published frame_images_DB holds JPEG
# frames (PNG for re-encoded copies); other files in a video folder are not frames
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclass
class YtfPairs:
    """Video pairs: ``split`` (P,) int, ``first``/``second`` video names, ``same`` (P,) bool."""

    root: Path
    splits_file: Path
    split: np.ndarray
    first: list[str]
    second: list[str]
    same: np.ndarray

    @property
    def frames_root(self) -> Path:
        return self.root / FRAMES_FOLDER


def find_ytf_root(data_root: Path | None) -> tuple[Path, Path]:
    """(the folder holding ``aligned_images_DB/``, its ``splits.txt``)."""
    if data_root is None:
        raise UserError("no data root to find YouTube Faces in: pass --data-root DIR")
    for root in (data_root / "YouTubeFaces", data_root / "YTF", data_root):
        for splits in (root / "splits.txt", root / "meta_data" / "splits.txt"):
            if (root / FRAMES_FOLDER).is_dir() and splits.is_file():
                return root, splits
    raise UserError(
        f"YouTube Faces not found under {data_root}: expected "
        f"{data_root / 'YouTubeFaces' / FRAMES_FOLDER}/<person>/<video>/*.jpg and "
        f"{data_root / 'YouTubeFaces' / 'splits.txt'} (or meta_data/splits.txt)"
    )


def read_splits(path: Path) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """Parse ``splits.txt``: (split numbers, first videos, second videos, is-same flags)."""
    lines = [
        (n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if line.strip()
    ]
    if not lines:
        raise UserError(f"{path} is empty: expected a header row and one row per video pair")
    header = lines[0][1].split(",")
    at = header_columns(header, f"{path}:{lines[0][0]}")
    split, first, second, same = [], [], [], []
    for number, line in lines[1:]:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(header):
            raise UserError(
                f"{path}:{number}: expected {len(header)} comma-separated fields, got {len(fields)}"
            )
        split_field, flag_field = fields[at["split number"]], fields[at["is same"]]
        if not split_field.isdigit() or int(split_field) < 1:
            raise UserError(
                f"{path}:{number}: column '{header[at['split number']].strip()}' must be a "
                f"positive split number (1-10 in the official file), got {shown(split_field)}"
            )
        if flag_field not in ("0", "1"):
            raise UserError(
                f"{path}:{number}: column '{header[at['is same']].strip()}' must be 1 or 0, "
                f"got {shown(flag_field)}"
            )
        split.append(int(split_field))
        first.append(fields[at["first name"]])
        second.append(fields[at["second name"]])
        same.append(flag_field == "1")
    if not split:
        raise UserError(f"{path} lists no video pair")
    if len(set(split)) < 2:
        raise UserError(
            f"{path}: every pair is in split {split[0]}; the protocol needs at least 2 splits "
            "(10 in the official file)"
        )
    return np.asarray(split), first, second, np.asarray(same, dtype=bool)


def _normalized(name: str) -> str:
    return " ".join(name.strip().strip('"').lower().replace("_", " ").replace("-", " ").split())


def header_columns(header: list[str], where: str) -> dict[str, int]:
    """The index of each needed column in ``header`` (by any of its `COLUMN_NAMES`), or
    one sentence naming the column(s) it lacks and the names accepted for them."""
    names = [_normalized(name) for name in header]
    at, missing = {}, []
    for column, aliases in COLUMN_NAMES.items():
        found = [i for i, name in enumerate(names) if name in aliases]
        if found:
            at[column] = found[0]
        else:
            missing.append(f"{column} (or {', '.join(aliases[1:4])})")
    if missing:
        raise UserError(
            f"{where}: the header lacks the column(s) {'; '.join(missing)}; the published "
            "header is 'split number, pair id, first name, second name, is same'"
        )
    return at


def read_ytf(data_root: Path | None) -> YtfPairs:
    """The YouTube Faces pairs under ``data_root`` (frames are listed when embedded)."""
    root, splits_file = find_ytf_root(data_root)
    split, first, second, same = read_splits(splits_file)
    return YtfPairs(root, splits_file, split, first, second, same)


def _frame_order(path: Path) -> tuple[int, str]:
    """Frames sort by the number before the suffix (``aligned_detect_3.127.jpg`` -> 127)."""
    match = _TRAILING_NUMBER.search(path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def video_frames(folder: Path) -> list[Path]:
    """The frame images of one video folder, in frame order (empty when it is absent)."""
    if not folder.is_dir():
        return []
    frames = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()]
    return sorted(frames, key=_frame_order)


def evenly_spaced(count: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` of ``count`` frames, evenly spaced from the first to the
    last (all of them when ``limit`` is 0 or ``count <= limit``)."""
    if limit <= 0 or count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))
