"""MegaFace challenge 1 (Kemelmacher-Shlizerman et al., CVPR 2016) as its devkit lists it.

```
<data root>/megaface/                         (or <data root>/MegaFace/, or the folder itself)
  templatelists/facescrub_features_list.json  {"id": [...], "path": [...]}: the probes
  templatelists/megaface_features_list.json_<size>_1   {"path": [...]}: the distractors
                                              (also found under devkit/templatelists/)
  facescrub_images/<path>   megaface_images/<path>     the images the lists name
  <image>.json beside an image (optional)     {"bounding_box": {x, y, width, height},
                                               "landmarks": {"0": {"x", "y"}, ...}}
```

Precomputed features (the devkit's format, so the 1M-distractor set needs no re-embedding)
live at ``<features>/facescrub/<path><suffix>`` and ``<features>/megaface/<path><suffix>``:
a 16-byte header of four little-endian int32 (rows = d, cols = 1, step = 4, type = 5 =
float32) followed by d float32 values.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from eqmcli.data.align import Template, align_face
from eqmcli.data.decode import DecodeError, decode_file
from eqmcli.errors import UserError, shown

PROBE_LIST = "facescrub_features_list.json"
DISTRACTOR_LIST = "megaface_features_list.json"
FEATURE_HEADER = struct.Struct("<4i")
CV_32F = 5


@dataclass
class MegafaceLists:
    """The probe images (with identities) and the distractor list of each size."""

    root: Path
    lists_folder: Path
    probe_paths: list[str]
    probe_ids: list[str]
    distractors: dict[int, list[str]]

    @property
    def probe_images(self) -> Path:
        return self.root / "facescrub_images"

    @property
    def distractor_images(self) -> Path:
        return self.root / "megaface_images"


def find_megaface(data_root: Path | None) -> tuple[Path, Path]:
    """(the MegaFace folder, its ``templatelists`` folder)."""
    if data_root is None:
        raise UserError("no data root to find MegaFace in: pass --data-root DIR")
    for root in (data_root / "megaface", data_root / "MegaFace", data_root):
        for lists in (root / "templatelists", root / "devkit" / "templatelists"):
            if (lists / PROBE_LIST).is_file():
                return root, lists
    raise UserError(
        f"MegaFace not found under {data_root}: expected {data_root / 'megaface'}/"
        f"templatelists/{PROBE_LIST} and {DISTRACTOR_LIST}_<size>_1 (the devkit's lists), "
        "with the images in facescrub_images/ and megaface_images/"
    )


def _json_list(path: Path, keys: tuple[str, ...]) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable JSON list ({type(exc).__name__})") from None
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in keys):
        raise UserError(f"{path}: expected a JSON object with the list(s) {', '.join(keys)}")
    if len({len(data[k]) for k in keys}) != 1:
        raise UserError(f"{path}: the lists {', '.join(keys)} must have the same length")
    return {k: [str(v) for v in data[k]] for k in keys}


def read_megaface(
    data_root: Path | None, sizes: tuple[int, ...], set_index: int = 1
) -> MegafaceLists:
    """The devkit's probe list and the distractor list of each of ``sizes``."""
    root, lists = find_megaface(data_root)
    probes = _json_list(lists / PROBE_LIST, ("id", "path"))
    distractors = {}
    for size in sizes:
        path = lists / f"{DISTRACTOR_LIST}_{size}_{set_index}"
        if not path.is_file():
            raise UserError(f"missing {path}: the devkit lists one distractor file per size")
        distractors[size] = _json_list(path, ("path",))["path"]
    return MegafaceLists(root, lists, probes["path"], probes["id"], distractors)


def read_feature_file(path: Path) -> np.ndarray:
    """One devkit feature file: float32 (d,) (a wrong header or size is a `UserError`)."""
    try:
        data = path.read_bytes()
    except OSError:
        raise UserError(f"feature file missing or unreadable: {path}") from None
    if len(data) < FEATURE_HEADER.size:
        raise UserError(f"{path} is too short for a devkit feature file")
    rows, cols, _step, kind = FEATURE_HEADER.unpack_from(data)
    count = rows * cols
    if kind != CV_32F or count <= 0 or len(data) != FEATURE_HEADER.size + 4 * count:
        raise UserError(
            f"{path} is not a devkit float32 feature file (header {rows}x{cols}, type {kind}, "
            f"{len(data)} bytes)"
        )
    return np.frombuffer(data, dtype="<f4", offset=FEATURE_HEADER.size, count=count).copy()


def read_feature_files(folder: Path, names: list[str], suffix: str) -> np.ndarray:
    """Features of ``names`` from ``folder/<name><suffix>`` files: float32 (N, d)."""
    rows = [read_feature_file(folder / f"{name}{suffix}") for name in names]
    dims = {row.shape[0] for row in rows}
    if len(dims) > 1:
        raise UserError(f"feature files under {folder} have different lengths: {sorted(dims)}")
    return np.stack(rows).astype(np.float32, copy=False)


def _landmarks(meta: dict) -> np.ndarray | None:
    """Consecutive landmarks "0", "1", ... (at least 2) as (K, 2) (x, y), or None."""
    marks = meta.get("landmarks")
    points = []
    while isinstance(marks, dict) and isinstance(marks.get(str(len(points))), dict):
        mark = marks[str(len(points))]
        points.append((float(mark.get("x", np.nan)), float(mark.get("y", np.nan))))
    array = np.asarray(points[:5], dtype=np.float64)
    return array if len(array) >= 2 and np.all(np.isfinite(array)) else None


class MegafaceImages(Dataset):
    """Images as the devkit lists them, each prepared from its ``<image>.json`` when present:
    aligned onto ``template`` by its landmarks (taken as the first points of the 5-point
    order), else cropped to its bounding box, else used whole (already aligned crops)."""

    def __init__(self, paths: list[Path], template: Template) -> None:
        self.paths = [str(p) for p in paths]
        self.template = template

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = Path(self.paths[index])
        try:
            image = decode_file(path)
        except DecodeError as exc:
            raise UserError(f"{path}: cannot be decoded ({exc})") from None
        meta_file = path.with_name(path.name + ".json")
        if not meta_file.is_file():
            return image
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{meta_file} is not a readable JSON file") from None
        points = _landmarks(meta) if isinstance(meta, dict) else None
        if points is not None:
            try:
                crop = align_face(image.permute(1, 2, 0).numpy(), points, self.template)
            except ValueError as exc:  # degenerate, or far outside the image
                raise UserError(f"{path}: cannot be aligned by {meta_file.name} ({exc})") from None
            return torch.from_numpy(crop).permute(2, 0, 1).contiguous()
        return _box_crop(image, meta.get("bounding_box") if isinstance(meta, dict) else None)


def _box_crop(image: torch.Tensor, box: object) -> torch.Tensor:
    """``image`` cut to a ``{x, y, width, height}`` box (clipped to the image), if valid."""
    if not isinstance(box, dict):
        return image
    try:
        x, y = int(float(box["x"])), int(float(box["y"]))
        w, h = int(float(box["width"])), int(float(box["height"]))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"bounding box {shown(box)} lacks numeric x, y, width, height") from None
    height, width = image.shape[-2:]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    return image[:, y0:y1, x0:x1].contiguous() if x1 > x0 and y1 > y0 else image
