"""5-point alignment: a known similarity warp is undone to within half a pixel; bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import Result

from eqmcli.data.align import (
    TEMPLATES,
    align_face,
    read_landmarks,
    similarity_matrix,
    warp_to_template,
)
from eqmcli.errors import UserError

SIGMA = 1.5  # px, the blobs drawn at the landmarks


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array(
        [
            [scale * np.cos(a), -scale * np.sin(a), tx],
            [scale * np.sin(a), scale * np.cos(a), ty],
            [0.0, 0.0, 1.0],
        ]
    )


def _blob_face(size: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """A grey canvas with a bright Gaussian blob at each landmark (x, y)."""
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    image = np.full(size, 30.0)
    for x, y in points:
        image += 220.0 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * SIGMA**2))
    image = np.clip(image, 0, 255)
    return np.repeat(image[..., None], 3, axis=2).astype(np.uint8)


def _blob_centres(image: np.ndarray, near: np.ndarray, radius: int = 5) -> np.ndarray:
    """Intensity-weighted centroid of each blob, in a window around its expected place."""
    grey = image[..., 0].astype(np.float64) - 30.0
    grey[grey < 0] = 0
    centres = []
    for x0, y0 in near:
        cx, cy = int(round(x0)), int(round(y0))
        window = grey[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1]
        ys, xs = np.mgrid[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1]
        centres.append(((window * xs).sum() / window.sum(), (window * ys).sum() / window.sum()))
    return np.asarray(centres)


@pytest.mark.usefixtures("skimage_installed")
@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize(
    ("angle", "scale", "tx", "ty"), [(17.0, 1.7, 40.0, 25.0), (-30.0, 0.8, 90.0, 60.0)]
)
def test_a_known_similarity_is_aligned_back_within_half_a_pixel(name, angle, scale, tx, ty):
    template = TEMPLATES[name]
    truth = _similarity(angle, scale, tx, ty)  # template crop -> photo
    face = _blob_face(template.size, template.array)
    photo = warp_to_template(face, truth, (260, 260))  # the "photo" holding that face
    landmarks = (truth[:2, :2] @ template.array.T).T + truth[:2, 2]
    estimated = similarity_matrix(landmarks, template)
    np.testing.assert_allclose(estimated, np.linalg.inv(truth), atol=1e-9)
    crop = align_face(photo, landmarks, template)
    assert crop.shape == (*template.size, 3) and crop.dtype == np.uint8
    found = _blob_centres(crop, template.array)
    assert np.abs(found - template.array).max() < 0.5, found - template.array


def test_landmark_rows_with_the_wrong_column_count_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "lm.txt"
    path.write_text("a.jpg 1 2 3 4 5 6 7 8 9 10 0.9\nb.jpg 1 2 3 4 5 6 7 8 9 0.9\n")
    with pytest.raises(UserError, match=r"lm.txt:2: expected 12 columns"):
        read_landmarks(path)
    path.write_text("a.jpg 1 2 3 4 5 6 7 8 9 x\n")
    with pytest.raises(UserError, match=r"lm.txt:1: landmarks and score must be numbers"):
        read_landmarks(path)
    path.write_text("a.jpg 1 2 3 4 5 6 7 8 9 10\n")
    with pytest.raises(UserError, match=r"lm.txt:1: expected 12 columns"):
        read_landmarks(path, with_score=True)
    listed = read_landmarks(path)
    assert listed.names == ["a.jpg"] and listed.scores is None
    assert listed.points.shape == (1, 5, 2) and listed.points[0, 4, 1] == 10.0


@pytest.mark.usefixtures("skimage_installed")
def test_eqm_data_align_writes_crops_and_lists_missing_images(tmp_path: Path, eqm) -> None:
    template = TEMPLATES["sphereface-112x96"]
    truth = _similarity(10.0, 1.4, 30.0, 20.0)
    photo = warp_to_template(_blob_face(template.size, template.array), truth, (200, 200))
    (tmp_path / "src" / "p1").mkdir(parents=True)
    Image.fromarray(photo).save(tmp_path / "src" / "p1" / "a.png")
    points = (truth[:2, :2] @ template.array.T).T + truth[:2, 2]
    row = " ".join(f"{v:.4f}" for v in points.reshape(-1))
    (tmp_path / "lm.txt").write_text(f"p1/a.png {row} 0.99\np1/gone.png {row} 0.5\n")
    result = eqm("data", "align", str(tmp_path / "src"), str(tmp_path / "dst"), "--landmarks",
                 str(tmp_path / "lm.txt"), "--template", "sphereface-112x96")
    assert result.exit_code == 0, result.output
    crop = np.asarray(Image.open(tmp_path / "dst" / "p1" / "a.png"))
    assert crop.shape == (112, 96, 3)
    assert np.abs(_blob_centres(crop, template.array) - template.array).max() < 0.5
    report = (tmp_path / "dst" / "align_report.txt").read_text()
    assert report == "missing\tp1/gone.png\n" and "1 listed images are missing" in result.stderr
    bad = eqm("data", "align", str(tmp_path / "src"), str(tmp_path / "d2"), "--landmarks",
              str(tmp_path / "lm.txt"), "--template", "vgg")
    assert bad.exit_code == 2 and "unknown alignment template" in bad.stderr


def _one_face_folder(tmp_path: Path) -> tuple[Path, str]:
    """``tmp_path/src/p1/a.png`` (200 px photo of a blob face) and its landmark row."""
    template = TEMPLATES["arcface-112"]
    truth = _similarity(10.0, 1.4, 30.0, 20.0)
    photo = warp_to_template(_blob_face(template.size, template.array), truth, (200, 200))
    (tmp_path / "src" / "p1").mkdir(parents=True)
    Image.fromarray(photo).save(tmp_path / "src" / "p1" / "a.png")
    points = (truth[:2, :2] @ template.array.T).T + truth[:2, 2]
    return tmp_path / "src", " ".join(f"{v:.4f}" for v in points.reshape(-1))


def _align(
    eqm: Callable[..., Result], src: Path, dst: Path, landmarks: Path
) -> tuple[int, str]:
    result = eqm("data", "align", str(src), str(dst), "--landmarks",
                 str(landmarks))
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.usefixtures("skimage_installed")
def test_align_refuses_a_destination_inside_the_source_and_the_reverse(tmp_path: Path, eqm) -> None:
    src, row = _one_face_folder(tmp_path)
    landmarks = tmp_path / "lm.txt"
    landmarks.write_text(f"p1/a.png {row}\n")
    original = (src / "p1" / "a.png").read_bytes()
    (tmp_path / "link").symlink_to(src)
    for dst in (src / "p1", src / "aligned", tmp_path / "link" / "out"):
        code, said = _align(eqm, src, dst, landmarks)
        assert code == 2 and "lies inside the source folder" in said, said
    code, said = _align(eqm, src / "p1", src, landmarks)
    assert code == 2 and "lies inside the destination folder" in said, said
    assert (src / "p1" / "a.png").read_bytes() == original
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == ["p1", "p1/a.png"]


@pytest.mark.usefixtures("skimage_installed")
def test_landmarks_far_outside_the_image_are_listed_not_aligned(tmp_path: Path, eqm) -> None:
    src, row = _one_face_folder(tmp_path)
    far = "1e15 " + " ".join(row.split()[1:])
    landmarks = tmp_path / "lm.txt"
    landmarks.write_text(f"p1/a.png {far}\n")
    code, said = _align(eqm, src, tmp_path / "dst", landmarks)
    assert code == 0 and "aligned 0 images" in said and "1 could not be aligned" in said
    assert not (tmp_path / "dst" / "p1" / "a.png").exists()
    report = (tmp_path / "dst" / "align_report.txt").read_text()
    assert report.startswith("unreadable\tp1/a.png\t") and "outside the 200x200 px" in report
    image = np.zeros((100, 80, 3), np.uint8)
    near = TEMPLATES["arcface-112"].array + [-70.0, 0.0]  # a point just beyond the border
    assert align_face(image, near, TEMPLATES["arcface-112"]).shape == (112, 112, 3)
    with pytest.raises(ValueError, match="outside the 80x100 px image"):
        align_face(image, near + [0.0, 500.0], TEMPLATES["arcface-112"])


@pytest.mark.usefixtures("skimage_installed")
def test_an_image_listed_twice_is_refused_before_anything_is_written(tmp_path: Path, eqm) -> None:
    src, row = _one_face_folder(tmp_path)
    landmarks = tmp_path / "lm.txt"
    landmarks.write_text(f"p1/a.png {row}\np1/./a.png {row}\n")
    code, said = _align(eqm, src, tmp_path / "dst", landmarks)
    assert code == 2 and "lists 'p1/./a.png' 2 times" in said and "overwrite" in said, said
    assert not (tmp_path / "dst").exists()


@pytest.mark.usefixtures("skimage_installed")
def test_benchmark_readers_name_the_image_whose_landmarks_lie_far_outside_it(
    tmp_path: Path,
) -> None:
    import json

    from eqmcli.data.align import AlignedImages
    from eqmcli.evaluation.megaface.files import MegafaceImages

    Image.fromarray(np.zeros((50, 40, 3), np.uint8)).save(tmp_path / "a.png")
    far = TEMPLATES["arcface-112"].array.copy()
    far[0] = (1e15, 10.0)
    with pytest.raises(UserError, match=r"a.png: cannot be aligned .*outside the 40x50 px"):
        AlignedImages([tmp_path / "a.png"], far[None], TEMPLATES["arcface-112"])[0]
    marks = {str(k): {"x": float(x), "y": float(y)} for k, (x, y) in enumerate(far)}
    (tmp_path / "a.png.json").write_text(json.dumps({"landmarks": marks}))
    with pytest.raises(UserError, match=r"a.png: cannot be aligned by a.png.json .*outside"):
        MegafaceImages([tmp_path / "a.png"], TEMPLATES["arcface-112"])[0]
