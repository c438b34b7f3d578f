"""IJB-B / IJB-C in the layout of InsightFace's IJB evaluation (``IJB_release``).

```
<data root>/IJBB/                      (or <data root>/IJB_release/IJBB/, or the folder itself)
  loose_crop/<image>.jpg               the images, as distributed (not aligned)
  meta/ijbb_face_tid_mid.txt           "<image> <template id> <media id>" per image
  meta/ijbb_name_5pts_score.txt        "<image> x1 y1 ... x5 y5 <detector score>" per image,
                                       in the same order as ijbb_face_tid_mid.txt
  meta/ijbb_template_pair_label.txt    "<template id> <template id> <1 same | 0 different>"
  meta/ijbb_1N_gallery_S1.csv, ..._S2.csv, ijbb_1N_probe_mixed.csv     (optional, 1:N)
```

IJB-C is the same with ``IJBC``/``ijbc`` and galleries ``ijbc_1N_gallery_G1.csv`` /
``_G2.csv``. The 1:N files are CSV with a header row whose first two columns are
``TEMPLATE_ID`` and ``SUBJECT_ID`` (one row per image of a template).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqmcli.data.align import read_landmarks
from eqmcli.errors import UserError

IJB_SETS: dict[str, str] = {"ijbb": "IJBB", "ijbc": "IJBC"}
GALLERY_NAMES: dict[str, tuple[str, str]] = {"ijbb": ("S1", "S2"), "ijbc": ("G1", "G2")}
LAYOUT_HINT = (
    "expected InsightFace's IJB layout: {folder}/meta/{name}_face_tid_mid.txt, "
    "{name}_name_5pts_score.txt, {name}_template_pair_label.txt and {folder}/loose_crop/"
)


@dataclass
class Gallery:
    """One 1:N gallery or probe list: unique ``templates`` (T,) and their ``subjects`` (T,)."""

    name: str
    templates: np.ndarray
    subjects: np.ndarray


@dataclass
class IjbSet:
    """The meta data of IJB-B or IJB-C: one row per image, the template pairs, 1:N lists."""

    name: str
    root: Path
    image_names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    detector_scores: np.ndarray
    pair_first: np.ndarray
    pair_second: np.ndarray
    pair_same: np.ndarray
    galleries: list[Gallery]
    probes: Gallery | None

    @property
    def image_folder(self) -> Path:
        return self.root / "loose_crop"


def find_ijb_root(name: str, data_root: Path | None) -> Path:
    """The ``IJBB``/``IJBC`` folder under ``data_root`` (a missing one names the layout)."""
    folder = IJB_SETS[name]
    if data_root is None:
        raise UserError(
            f"no data root to find {folder} in: pass --data-root DIR (the folder holding {folder}/)"
        )
    candidates = [data_root / folder, data_root / "IJB_release" / folder, data_root]
    for candidate in candidates:
        if (candidate / "meta" / f"{name}_face_tid_mid.txt").is_file():
            return candidate
    raise UserError(
        f"{folder} not found under {data_root}: "
        + LAYOUT_HINT.format(folder=data_root / folder, name=name)
    )


def _table(path: Path, columns: int, layout: str) -> list[list[str]]:
    """Whitespace-separated rows of exactly ``columns`` fields (line-numbered errors)."""
    if not path.is_file():
        raise UserError(f"missing {path}: {layout}")
    rows = []
    with path.open(encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != columns:
                raise UserError(
                    f"{path}:{number}: expected {columns} columns, got {len(parts)}"
                )
            rows.append(parts)
    if not rows:
        raise UserError(f"{path} is empty: {layout}")
    return rows


def _integers(rows: list[list[str]], column: int, path: Path) -> np.ndarray:
    try:
        return np.asarray([int(row[column]) for row in rows], dtype=np.int64)
    except ValueError:
        raise UserError(f"{path}: column {column + 1} must hold integer ids") from None


def _gallery(path: Path, name: str) -> Gallery:
    """A 1:N CSV (header; TEMPLATE_ID, SUBJECT_ID first) as unique templates + subjects."""
    with path.open(encoding="utf-8", errors="replace", newline="") as stream:
        rows = [row for row in csv.reader(stream) if row]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise UserError(f"{path}: expected a header row and TEMPLATE_ID,SUBJECT_ID rows")
    try:
        pairs = np.asarray([(int(r[0]), int(r[1])) for r in rows[1:]], dtype=np.int64)
    except (ValueError, IndexError):
        raise UserError(f"{path}: TEMPLATE_ID and SUBJECT_ID must be integers") from None
    templates, first = np.unique(pairs[:, 0], return_index=True)
    return Gallery(name, templates, pairs[first, 1])


def read_ijb(name: str, data_root: Path | None) -> IjbSet:
    """Read IJB-B (``ijbb``) or IJB-C (``ijbc``) meta data (images are read when embedded)."""
    root = find_ijb_root(name, data_root)
    meta = root / "meta"
    layout = LAYOUT_HINT.format(folder=root, name=name)
    media_rows = _table(meta / f"{name}_face_tid_mid.txt", 3, layout)
    landmark_file = meta / f"{name}_name_5pts_score.txt"
    if not landmark_file.is_file():
        raise UserError(f"missing {landmark_file}: {layout}")
    landmarks = read_landmarks(landmark_file, with_score=True)
    if len(landmarks.names) != len(media_rows):
        raise UserError(
            f"{landmark_file} lists {len(landmarks.names):,} images but "
            f"{meta / f'{name}_face_tid_mid.txt'} lists {len(media_rows):,}; they must match"
        )
    for number, (row, listed) in enumerate(zip(media_rows, landmarks.names, strict=True), 1):
        if row[0] != listed:
            raise UserError(
                f"{landmark_file}:{number}: image {listed[:80]!r} differs from the "
                f"face_tid_mid file's {row[0][:80]!r} on the same line"
            )
    pair_file = meta / f"{name}_template_pair_label.txt"
    pair_rows = _table(pair_file, 3, layout)
    same = _integers(pair_rows, 2, pair_file)
    if not np.isin(same, (0, 1)).all():
        raise UserError(f"{pair_file}: the third column must be 1 (same) or 0 (different)")
    first_name, second_name = GALLERY_NAMES[name]
    gallery_files = [meta / f"{name}_1N_gallery_{g}.csv" for g in (first_name, second_name)]
    probe_file = meta / f"{name}_1N_probe_mixed.csv"
    has_1n = probe_file.is_file() and all(p.is_file() for p in gallery_files)
    return IjbSet(
        name=name,
        root=root,
        image_names=landmarks.names,
        templates=_integers(media_rows, 1, meta / f"{name}_face_tid_mid.txt"),
        medias=_integers(media_rows, 2, meta / f"{name}_face_tid_mid.txt"),
        landmarks=landmarks.points,
        detector_scores=landmarks.scores,  # type: ignore[arg-type]
        pair_first=_integers(pair_rows, 0, pair_file),
        pair_second=_integers(pair_rows, 1, pair_file),
        pair_same=same.astype(bool),
        galleries=[
            _gallery(path, g)
            for path, g in zip(gallery_files, (first_name, second_name), strict=True)
        ]
        if has_1n
        else [],
        probes=_gallery(probe_file, "probe_mixed") if has_1n else None,
    )
