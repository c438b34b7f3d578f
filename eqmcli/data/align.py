"""5-point face alignment: a similarity transform onto a standard template, then a warp.

One routine (`align_face`) serves `eqm data align` and the IJB-B/IJB-C reader. The five
landmarks are, in this order: left eye, right eye, nose tip, left mouth corner, right
mouth corner, as (x, y) pixels of the source image ("left" as seen in the image).

Templates (reference points in the output crop, (x, y) pixels):

- ``arcface-112``: the 112x112 points of InsightFace (Deng et al., ArcFace, CVPR 2019;
  ``insightface.utils.face_align``), used by ArcFace/CosFace-style 112x112 crops and the
  IJB evaluation of InsightFace.
- ``sphereface-112x96``: the 112x96 (height x width) points of SphereFace (Liu et al.,
  CVPR 2017) and CosFace (Wang et al., CVPR 2018). The ArcFace points are these shifted
  8 px to the right.

The transform is estimated by least squares (Umeyama's method) with scikit-image's
`SimilarityTransform` and applied by `skimage.transform.warp` (bilinear, black outside the
image): the same estimate InsightFace uses, and a warp that matches OpenCV's
``warpAffine`` at pixel centres, without adding OpenCV as a dependency.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from eqmcli.atomic import atomic_write, atomic_write_text
from eqmcli.data.decode import DecodeError, decode_file
from eqmcli.errors import UserError, shown

ALIGN_EXTRA_HINT = "face alignment needs scikit-image: pip install 'eqmcli[align]'"


@dataclass(frozen=True)
class Template:
    """Reference landmark positions (5 x (x, y) pixels) in an output crop of ``size`` (H, W)."""

    name: str
    size: tuple[int, int]
    points: tuple[tuple[float, float], ...]

    @property
    def array(self) -> np.ndarray:
        """The points as a float64 ``(5, 2)`` array of (x, y) pixels."""
        return np.asarray(self.points, dtype=np.float64)


_SPHEREFACE_POINTS = (
    (30.2946, 51.6963),
    (65.5318, 51.5014),
    (48.0252, 71.7366),
    (33.5493, 92.3655),
    (62.7299, 92.2041),
)
TEMPLATES: dict[str, Template] = {
    "arcface-112": Template(
        "arcface-112", (112, 112), tuple((x + 8.0, y) for x, y in _SPHEREFACE_POINTS)
    ),
    "sphereface-112x96": Template("sphereface-112x96", (112, 96), _SPHEREFACE_POINTS),
}
DEFAULT_TEMPLATE = "arcface-112"


def template_for_input(input_size: tuple[int, int]) -> Template:
    """The template matching a model input: 112x96 crops for (112, 96) models, else the
    112x112 ArcFace crop (resized to the model input by the extractor)."""
    return TEMPLATES["sphereface-112x96" if tuple(input_size) == (112, 96) else "arcface-112"]


def get_template(name: str) -> Template:
    """The template called ``name``; an unknown name is a `UserError` listing the choices."""
    if name not in TEMPLATES:
        raise UserError(
            f"unknown alignment template {shown(name)}; choose {' or '.join(TEMPLATES)}"
        )
    return TEMPLATES[name]


def require_align() -> object:
    """scikit-image's ``transform`` module; without the [align] extra a `UserError` says
    how to install it."""
    try:
        from skimage import transform
    except ImportError:
        raise UserError(ALIGN_EXTRA_HINT) from None
    return transform


def similarity_matrix(landmarks: np.ndarray, template: Template) -> np.ndarray:
    """The 3x3 similarity (rotation, uniform scale, translation) taking ``landmarks`` (source
    (x, y) pixels, shape (K, 2), K >= 2) onto the first K template points, least squares."""
    transform = require_align()
    source = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    target = template.array[: len(source)]
    cls = transform.SimilarityTransform  # type: ignore[attr-defined]
    if hasattr(cls, "from_estimate"):  # scikit-image >= 0.26
        estimated = cls.from_estimate(source, target)
        ok = bool(estimated)
    else:
        estimated = cls()
        ok = estimated.estimate(source, target)
    if not ok or not np.all(np.isfinite(estimated.params)):
        raise ValueError("degenerate landmarks: no similarity transform fits them")
    return np.asarray(estimated.params, dtype=np.float64)


def warp_to_template(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp a uint8 ``(H, W, 3)`` image by the 3x3 ``matrix`` (source -> crop pixels) into a
    uint8 crop of ``size`` (H, W): bilinear, black outside the source image."""
    transform = require_align()
    inverse = np.linalg.inv(matrix)
    warped = transform.warp(  # type: ignore[attr-defined]
        image,
        inverse_map=transform.AffineTransform(matrix=inverse),  # type: ignore[attr-defined]
        output_shape=(size[0], size[1], image.shape[2]),
        order=1,
        mode="constant",
        cval=0.0,
        preserve_range=True,
    )
    return np.clip(np.rint(warped), 0, 255).astype(np.uint8)


def check_landmarks_in_image(landmarks: np.ndarray, height: int, width: int) -> None:
    """`ValueError` when a landmark ((x, y) pixels) lies farther outside the ``height`` x
    ``width`` image than the image's own size (a detector's point beyond the border is
    fine; one at 1e15 would give an all-black crop)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    low, high = np.array([-width, -height]), np.array([2 * width, 2 * height])
    outside = ~np.all((points >= low) & (points <= high), axis=1)
    if outside.any():
        x, y = points[int(np.argmax(outside))]
        raise ValueError(
            f"landmark ({x:.6g}, {y:.6g}) lies more than the image's size outside the "
            f"{width}x{height} px image"
        )


def align_face(image: np.ndarray, landmarks: np.ndarray, template: Template) -> np.ndarray:
    """Align a uint8 ``(H, W, 3)`` image by its 5 (or at least 2) landmarks onto ``template``:
    a uint8 ``(template H, template W, 3)`` crop. Landmarks far outside the image are a
    `ValueError` (`check_landmarks_in_image`)."""
    check_landmarks_in_image(landmarks, image.shape[0], image.shape[1])
    return warp_to_template(image, similarity_matrix(landmarks, template), template.size)


class AlignedImages(Dataset):
    """Image files aligned on the fly by their landmarks: item i -> uint8 (3, H, W) crop of
    ``template`` (a file that cannot be decoded is a `UserError` naming it)."""

    def __init__(self, paths: list[Path], landmarks: np.ndarray, template: Template) -> None:
        if len(paths) != len(landmarks):
            raise ValueError("one set of landmarks per image is needed")
        self.paths = [str(p) for p in paths]
        self.landmarks = np.asarray(landmarks, dtype=np.float64)
        self.template = template

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            image = decode_file(self.paths[index]).permute(1, 2, 0).numpy()
            crop = align_face(image, self.landmarks[index], self.template)
        except (DecodeError, ValueError) as exc:
            raise UserError(f"{self.paths[index]}: cannot be aligned ({exc})") from None
        return torch.from_numpy(crop).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------- landmark files
@dataclass
class LandmarkList:
    """Images with their 5 landmarks: ``names`` (as written), ``points`` float64 (N, 5, 2)
    (x, y) pixels, and ``scores`` float32 (N,) when the file has a score column."""

    names: list[str]
    points: np.ndarray
    scores: np.ndarray | None


def read_landmarks(path: str | Path, *, with_score: bool | None = None) -> LandmarkList:
    """Read ``name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 [score]`` lines (whitespace separated).

    This is the layout of InsightFace's ``ijbb_name_5pts_score.txt``. ``with_score``:
    True requires the score column, False forbids it, None accepts both (every line the
    same). A line with another number of columns, or a value that is not a finite
    number, is a `UserError` naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"landmark file not found: {path}")
    names: list[str] = []
    rows: list[list[float]] = []
    allowed = {True: (12,), False: (11,), None: (11, 12)}[with_score]
    columns: int | None = None
    with path.open(encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in allowed or (columns is not None and len(parts) != columns):
                expected = " or ".join(str(c) for c in ((columns,) if columns else allowed))
                raise UserError(
                    f"{path}:{number}: expected {expected} columns (name, 5 x/y landmark "
                    f"pairs{', score' if 12 in allowed else ''}), got {len(parts)}"
                )
            columns = len(parts)
            try:
                values = [float(v) for v in parts[1:]]
            except ValueError:
                raise UserError(f"{path}:{number}: landmarks and score must be numbers") from None
            if not all(np.isfinite(values)):
                raise UserError(f"{path}:{number}: landmarks and score must be finite numbers")
            names.append(parts[0])
            rows.append(values)
    if not rows:
        raise UserError(f"landmark file {path} lists no image")
    table = np.asarray(rows, dtype=np.float64)
    scores = table[:, 10].astype(np.float32) if columns == 12 else None
    return LandmarkList(names, table[:, :10].reshape(-1, 5, 2), scores)


# ------------------------------------------------------------------- eqm data align
@dataclass
class AlignReport:
    """What `align_folder` did: crops written, images listed but missing or unreadable."""

    written: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    report_file: Path | None = None
    template: str = DEFAULT_TEMPLATE


def _inside(root: Path, name: str) -> Path | None:
    """``root / name`` when ``name`` is a relative path that stays inside ``root``."""
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts:
        return None
    return root / candidate


def check_separate_folders(source: Path, destination: Path) -> None:
    """`UserError` unless ``source`` and ``destination`` are separate folders (neither is the
    other nor inside it, symbolic links resolved): crops written into the source would
    overwrite its images or be read back as sources."""
    src, dst = source.resolve(), destination.resolve()
    if dst == src:
        raise UserError("the destination folder must differ from the source folder")
    if src in dst.parents:
        raise UserError(
            f"the destination folder {destination} lies inside the source folder {source}; "
            "choose one outside it"
        )
    if dst in src.parents:
        raise UserError(
            f"the source folder {source} lies inside the destination folder {destination}; "
            "choose a destination outside it"
        )


def check_distinct_outputs(names: list[str], landmarks_file: Path) -> None:
    """`UserError` naming the first image listed twice (as the same normalized path): its
    two crops would go to one output file."""
    seen: set[str] = set()
    for name in names:
        key = os.path.normpath(name)
        if key in seen:
            count = sum(os.path.normpath(other) == key for other in names)
            raise UserError(
                f"{landmarks_file} lists {shown(name)} {count} times; each listed image is "
                "written to DST/<name>, so one crop would overwrite another (one line per "
                "image, or copy the image under another name for a second face)"
            )
        seen.add(key)


def align_folder(
    source: str | Path,
    destination: str | Path,
    landmarks_file: str | Path,
    template_name: str = DEFAULT_TEMPLATE,
) -> AlignReport:
    """Align every image listed in ``landmarks_file`` (paths relative to ``source``) into
    ``destination`` under the same relative path, in the format of its suffix (JPEG at
    quality 95; PNG for an unknown suffix); each file is written through a temporary
    sibling.

    Images listed but absent, unreadable or with landmarks far outside the image are
    skipped and listed in ``destination/align_report.txt``; nothing is skipped silently.
    Refused before anything is written: ``destination`` inside ``source`` or the other way
    round, and an image listed twice.
    """
    template = get_template(template_name)
    require_align()
    source, destination = Path(source), Path(destination)
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    check_separate_folders(source, destination)
    listed = read_landmarks(landmarks_file)
    check_distinct_outputs(listed.names, Path(landmarks_file))
    report = AlignReport(template=template.name)
    for name, points in zip(listed.names, listed.points, strict=True):
        src = _inside(source, name)
        dst = _inside(destination, name)
        if src is None or dst is None or not src.is_file():
            report.missing.append(name)
            continue
        try:
            image = decode_file(src).permute(1, 2, 0).numpy()
            crop = align_face(image, points, template)
        except (DecodeError, ValueError) as exc:
            report.unreadable.append(f"{name}\t{exc}")
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dst, lambda stream, c=crop, d=dst: stream.write(_encode(c, d)), sync=False)
        report.written += 1
    lines = [f"missing\t{n}" for n in report.missing]
    lines += [f"unreadable\t{n}" for n in report.unreadable]
    destination.mkdir(parents=True, exist_ok=True)
    report.report_file = atomic_write_text(
        destination / "align_report.txt", "".join(line + os.linesep for line in lines)
    )
    return report


def _encode(crop: np.ndarray, path: Path) -> bytes:
    """The crop encoded in the format its file name says (PNG for an unknown suffix)."""
    kind = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    buffer = io.BytesIO()
    options = {"quality": 95} if kind == "JPEG" else {}
    Image.fromarray(crop).save(buffer, format=kind, **options)
    return buffer.getvalue()
