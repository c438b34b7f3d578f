"""YouTube Faces (Wolf, Hassner & Maoz, CVPR 2011) as distributed.

```
<data root>/YouTubeFaces/                 (or <data root>/YTF/, or the folder itself)
  aligned_images_DB/<person>/<video>/aligned_detect_<video>.<frame>.jpg
  splits.txt                              (or meta_data/splits.txt)
```

``splits.txt`` is comma separated with a header row; its columns are found by name:
``split number`` (1-10), ``first name`` and ``second name`` (``<person>/<video>``) and
``is same`` (1 or 0). The official file lists 5,000 video pairs, 500 per split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqmcli.errors import UserError

FRAMES_FOLDER = "aligned_images_DB"
REQUIRED_COLUMNS = ("split number", "first name", "second name", "is same")
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
    header = [name.strip().lower() for name in lines[0][1].split(",")]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UserError(
            f"{path}:{lines[0][0]}: the header lacks the column(s) {', '.join(missing)}; "
            f"expected {', '.join(REQUIRED_COLUMNS)}"
        )
    at = {name: header.index(name) for name in REQUIRED_COLUMNS}
    split, first, second, same = [], [], [], []
    for number, line in lines[1:]:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(header):
            raise UserError(
                f"{path}:{number}: expected {len(header)} comma-separated fields, got {len(fields)}"
            )
        try:
            split.append(int(fields[at["split number"]]))
            flag = int(fields[at["is same"]])
        except ValueError:
            raise UserError(f"{path}:{number}: split number and is same must be integers") from None
        if flag not in (0, 1):
            raise UserError(f"{path}:{number}: 'is same' must be 1 or 0")
        first.append(fields[at["first name"]])
        second.append(fields[at["second name"]])
        same.append(bool(flag))
    if not split:
        raise UserError(f"{path} lists no video pair")
    return np.asarray(split), first, second, np.asarray(same, dtype=bool)


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
