"""IJB-C end to end on a tiny fixture in InsightFace's layout, against explicit-loop references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eqmcli.data.align import TEMPLATES, align_face, warp_to_template
from eqmcli.evaluation.features import extract_embeddings
from eqmcli.run.rundir import load_trained

# every test builds its IJB fixture by warping faces, which needs the [align] extra
pytestmark = pytest.mark.usefixtures("skimage_installed")

SUBJECTS, TEMPLATES_PER_SUBJECT = 8, 4


def _face(subject: int, rng: np.random.Generator) -> np.ndarray:
    """A 112x112 "face": two subjects share each colour, a subject stripe frequency with a
    random phase, and strong noise, so identities overlap (no perfect separation)."""
    ys, xs = np.mgrid[0:112, 0:112]
    base = np.array([90 + 30 * (subject // 2), 140, 110 - 15 * (subject // 2)], float)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 30 * np.sin(xs / (4 + subject % 2) + ys / 7 + phase)[..., None]
    image = base + stripes + rng.normal(0, 45, size=(112, 112, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle)
    return np.array(
        [[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty],
         [0, 0, 1.0]]
    )


def make_ijbc(root: Path) -> dict:
    """IJBC/ with loose_crop/, the three 1:1 meta files and the 1:N CSVs (tiny)."""
    rng = np.random.default_rng(0)
    folder = root / "IJBC"
    (folder / "loose_crop").mkdir(parents=True)
    (folder / "meta").mkdir()
    template = TEMPLATES["arcface-112"]
    rows, landmark_rows, images = [], [], []
    media = 0
    for subject in range(SUBJECTS):
        for t in range(TEMPLATES_PER_SUBJECT):
            tid = 100 * subject + t
            for m in range(1 + (t % 2)):  # 1 or 2 media per template
                media += 1
                for _ in range(1 + (m + t) % 2):  # 1 or 2 images per media
                    name = f"img/{len(images)}.jpg"
                    truth = _similarity(rng.uniform(-15, 15), 0.5, 10 + rng.uniform(0, 6), 8)
                    photo = warp_to_template(_face(subject, rng), truth, (80, 80))
                    (folder / "loose_crop" / "img").mkdir(exist_ok=True)
                    Image.fromarray(photo).save(folder / "loose_crop" / name, quality=95)
                    points = np.round((truth[:2, :2] @ template.array.T).T + truth[:2, 2], 3)
                    score = round(float(rng.uniform(0.6, 1.0)), 4)
                    rows.append(f"{name} {tid} {media}")
                    landmark_rows.append(
                        name + " " + " ".join(f"{v:.3f}" for v in points.reshape(-1)) + f" {score}"
                    )
                    images.append((name, tid, media, points, score, subject))
    (folder / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(rows) + "\n")
    (folder / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(landmark_rows) + "\n")
    tids = sorted({tid for _, tid, *_ in images})
    pairs = [(a, b, int(a // 100 == b // 100)) for i, a in enumerate(tids) for b in tids[i + 1 :]]
    (folder / "meta" / "ijbc_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {s}\n" for a, b, s in pairs)
    )
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    for gallery, subjects in (("G1", range(0, 4)), ("G2", range(4, 8))):
        lines = [f"{100 * s},{s},img/x.jpg\n" for s in subjects for _ in range(2)]
        (folder / "meta" / f"ijbc_1N_gallery_{gallery}.csv").write_text(header + "".join(lines))
    probes = [f"{100 * s + t},{s},img/x.jpg\n" for s in range(SUBJECTS) for t in range(1, 4)]
    (folder / "meta" / "ijbc_1N_probe_mixed.csv").write_text(header + "".join(probes))
    return {"folder": folder, "images": images, "pairs": pairs}


class _Crops(torch.utils.data.Dataset):
    def __init__(self, crops: list[np.ndarray]) -> None:
        self.crops = crops

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.crops[i]).permute(2, 0, 1).contiguous()


def _reference(run: Path, fixture: dict, missing: set[str]) -> dict:
    """Every number by explicit loops over the same aligned crops and model."""
    trained = load_trained(run)
    kept = [im for im in fixture["images"] if im[0] not in missing]
    crops = []
    for name, *_rest in kept:
        photo = np.asarray(Image.open(fixture["folder"] / "loose_crop" / name).convert("RGB"))
        crops.append(align_face(photo, kept[len(crops)][3], TEMPLATES["arcface-112"]))
    raw = extract_embeddings(
        trained.backbone, _Crops(crops), device="cpu", input_size=trained.input_size,
        progress=False, normalize=False,
    ).flip.double().numpy()
    templates = {}
    for tid in sorted({im[1] for im in kept}):
        total = np.zeros(raw.shape[1])
        for media in sorted({im[2] for im in kept if im[1] == tid}):
            rows = [i for i, im in enumerate(kept) if im[1] == tid and im[2] == media]
            total += np.mean([raw[i] * kept[i][4] for i in rows], axis=0)
        templates[tid] = total / np.linalg.norm(total)
    pairs = [(a, b, s) for a, b, s in fixture["pairs"] if a in templates and b in templates]
    scores = np.array([templates[a] @ templates[b] for a, b, _ in pairs])
    same = np.array([s for *_, s in pairs], bool)
    impostors = np.sort(scores[~same])[::-1]
    tar = {}
    for far in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
        allowed = int(np.floor(far * impostors.size + 1e-9))
        key = f"{far:.0e}"
        if impostors.size * far < 1:
            tar[key] = None
        else:
            bar = impostors[allowed] if allowed < impostors.size else -np.inf
            tar[key] = float(np.mean(scores[same] > bar))
    return {"templates": templates, "scores": scores, "same": same, "tar": tar}


def _reference_rank1(templates: dict, gallery_subjects: range) -> float:
    probes = [(100 * s + t, s) for s in range(SUBJECTS) for t in range(1, 4)]
    mated = [(tid, s) for tid, s in probes if s in gallery_subjects]
    hits = 0
    for tid, s in mated:
        ranked = sorted(gallery_subjects, key=lambda g: -(templates[tid] @ templates[100 * g]))
        hits += ranked[0] == s
    return hits / len(mated)


def test_ijbc_1to1_and_1toN_match_explicit_loops(untrained_run: Path, tmp_path: Path, eqm) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    run = untrained_run
    fixture = make_ijbc(tmp_path / "data")
    gone = fixture["images"][1][0]  # the second image of a two-image template
    (fixture["folder"] / "loose_crop" / gone).unlink()
    result = eqm("eval", str(run), "--ijbc", "--data-root", str(tmp_path / "data"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["ijbc"]
    reference = _reference(run, fixture, {gone})
    assert data["pairs"] == len(reference["scores"]) == 496
    assert data["negatives"] == 448 and data["positives"] == 48
    assert data["tar_at_far"] == pytest.approx(reference["tar"])
    assert data["tar_at_far"]["1e-02"] is not None and data["tar_at_far"]["1e-03"] is None
    assert data["auc"] == pytest.approx(roc_auc_score(reference["same"], reference["scores"]))
    sk_far, sk_tar, _ = roc_curve(reference["same"], reference["scores"])  # InsightFace's table
    sk_far, sk_tar = np.flipud(sk_far), np.flipud(sk_tar)
    nearest = {f"{f:.0e}": sk_tar[int(np.argmin(abs(sk_far - f)))] for f in (1e-3, 1e-2, 1e-1)}
    assert {k: data["tar_at_far_nearest"][k] for k in nearest} == pytest.approx(nearest)
    assert data["missing_images"] == 1 and data["images"] == len(fixture["images"]) - 1
    assert (run / "eval" / "ijbc_missing.txt").read_text() == f"{gone}\n"
    g1, g2 = data["identification"]
    assert g1["gallery"] == "G1" and g1["mated"] == 12 and g1["non_mated"] == 12
    assert g1["cmc"]["1"] == pytest.approx(_reference_rank1(reference["templates"], range(4)))
    assert g2["cmc"]["1"] == pytest.approx(_reference_rank1(reference["templates"], range(4, 8)))
    assert g1["tpir_at_fpir"]["1e-02"] is None  # 12 non-mated searches cannot measure 1e-2
    assert data["identification_mean"]["cmc"]["1"] == pytest.approx(
        (g1["cmc"]["1"] + g2["cmc"]["1"]) / 2
    )
    assert json.loads((run / "eval" / "ijbc.json").read_text()) == data


def test_ijb_cache_is_reused_and_roc_is_plotted(
    untrained_run: Path, tmp_path: Path, monkeypatch, eqm
) -> None:
    run = untrained_run
    make_ijbc(tmp_path / "data")
    args = ["eval", str(run), "--ijbc", "--data-root", str(tmp_path / "data")]
    first = eqm(*args)
    assert first.exit_code == 0, first.output
    assert "IJB 1:1" in first.stdout and "IJB 1:N" in first.stdout
    assert len(list((run / "eval" / "cache").glob("ijbc-*.npy"))) == 1

    def no_embedding(*_args, **_kwargs):
        raise AssertionError("embedded again despite the cache")

    monkeypatch.setattr("eqmcli.evaluation.feature_cache.extract_embeddings", no_embedding)
    again = eqm(*args, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["ijbc"]["tar_at_far"] == json.loads(
        (run / "eval" / "ijbc.json").read_text()
    )["tar_at_far"]
    plot = eqm("plot", str(run), "--figure", "roc", "--sets", "ijbc")
    assert plot.exit_code == 0, plot.output
    assert (run / "figures" / "roc.png").is_file()


def test_ijb_bad_input_is_one_sentence(untrained_run: Path, tmp_path: Path, eqm) -> None:
    run = untrained_run
    fixture = make_ijbc(tmp_path / "data")
    meta = fixture["folder"] / "meta"
    (meta / "ijbc_template_pair_label.txt").unlink()
    result = eqm("eval", str(run), "--ijbc", "--data-root", str(tmp_path / "data"))
    message = result.stderr.replace("\n", "")
    assert result.exit_code == 2 and "ijbc_template_pair_label.txt" in message
    assert "InsightFace's IJB layout" in message and "Traceback" not in result.output
    (meta / "ijbc_template_pair_label.txt").write_text("1 2 1\n")
    lines = (meta / "ijbc_name_5pts_score.txt").read_text().splitlines()
    lines[2] = " ".join(lines[2].split()[:-2])  # a row that lost two columns
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(lines) + "\n")
    result = eqm("eval", str(run), "--ijbb", "--ijbc", "--data-root", str(tmp_path / "data"))
    assert result.exit_code == 2 and "IJBB not found" in result.stderr.replace("\n", "")
    result = eqm("eval", str(run), "--ijbc", "--data-root", str(tmp_path / "data"))
    message = result.stderr.replace("\n", "")
    assert result.exit_code == 2 and "ijbc_name_5pts_score.txt:3: expected 12 columns" in message
