"""YouTube Faces and MegaFace end to end on tiny fixtures in their published layouts."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eqmcli.data.decode import ImageFiles
from eqmcli.evaluation.features import extract_embeddings
from eqmcli.evaluation.verification import verify
from eqmcli.run.rundir import load_trained

PEOPLE = ["Ann_A", "Bob_B", "Cid_C", "Dee_D", "Eve_E", "Fay_F"]


def _frame(person: int, rng: np.random.Generator, size: int = 20) -> Image.Image:
    base = np.array([50 + 30 * person, 200 - 25 * person, 120], float)
    pixels = base + rng.normal(0, 50, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_ytf(root: Path, header: str = "split number, first name, second name, is same") -> Path:
    """YouTubeFaces/aligned_images_DB/<person>/<video>/aligned_detect_<v>.<frame>.jpg + splits."""
    rng = np.random.default_rng(0)
    base = root / "YouTubeFaces"
    for p, person in enumerate(PEOPLE):
        for video in range(2):
            folder = base / "aligned_images_DB" / person / str(video)
            folder.mkdir(parents=True)
            for frame in range(5 + (p + video) % 4):  # 5..8 frames, numbered from 11
                _frame(p, rng).save(folder / f"aligned_detect_{video}.{11 + frame}.jpg")
    rows = [header]
    for split in range(1, 11):
        for k in range(4):
            a = (split + k) % len(PEOPLE)
            if k % 2 == 0:  # same person, two videos
                rows.append(f"{split}, {PEOPLE[a]}/0, {PEOPLE[a]}/1, 1")
            else:
                b = (a + 1 + split % 3) % len(PEOPLE)
                rows.append(f"{split}, {PEOPLE[a]}/{split % 2}, {PEOPLE[b]}/0, 0")
    (base / "splits.txt").write_text("\n".join(rows) + "\n")
    return base


def _evenly(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    return sorted({int(round(i * (count - 1) / (limit - 1))) for i in range(limit)})


def test_ytf_ten_official_splits_match_explicit_loops(
    untrained_run: Path, tmp_path: Path, eqm
) -> None:
    run = untrained_run
    base = make_ytf(tmp_path / "data")
    result = eqm("eval", run, "--ytf", "--ytf-frames", "3", "--data-root", tmp_path / "data",
                 "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["ytf"]
    trained = load_trained(run)
    descriptors = {}
    for person in PEOPLE:
        for video in range(2):
            folder = base / "aligned_images_DB" / person / str(video)
            frames = sorted(folder.iterdir(), key=lambda f: int(f.stem.split(".")[-1]))
            chosen = [frames[i] for i in _evenly(len(frames), 3)]
            emb = extract_embeddings(
                trained.backbone, ImageFiles(chosen), device="cpu",
                input_size=trained.input_size, progress=False,
            ).flip.double().numpy()
            mean = emb.mean(axis=0)
            descriptors[f"{person}/{video}"] = mean / np.linalg.norm(mean)
    lines = (base / "splits.txt").read_text().splitlines()[1:]
    fields = [[f.strip() for f in line.split(",")] for line in lines]
    scores = np.array([descriptors[a] @ descriptors[b] for _, a, b, _ in fields])
    same = np.array([s == "1" for *_, s in fields])
    split = np.array([int(f[0]) for f in fields])
    order = np.random.default_rng(1).permutation(len(scores))  # folds come from the labels
    expected = verify(scores[order], same[order], fold_of=split[order])
    assert data["folds"] == 10 and data["pairs"] == 40 and data["frames"] == 12 * 3
    assert data["fold_accuracies"] == pytest.approx(expected.fold_accuracies)
    assert data["accuracy"] == pytest.approx(expected.accuracy)
    assert data["auc"] == pytest.approx(expected.auc)


def test_ytf_header_by_name_missing_video_and_bad_rows(
    untrained_run: Path, tmp_path: Path, eqm
) -> None:
    run = untrained_run
    base = make_ytf(
        tmp_path / "data", header="split number, pair id, first name, second name, is same"
    )
    text = (base / "splits.txt").read_text().splitlines()
    rows = [text[0]] + [
        f"{r.split(',')[0]}, {k}," + ",".join(r.split(",")[1:]) for k, r in enumerate(text[1:])
    ]
    (base / "splits.txt").write_text("\n".join(rows) + "\n")
    for frame in (base / "aligned_images_DB" / "Ann_A" / "1").iterdir():
        frame.unlink()
    args = ["eval", str(run), "--ytf", "--data-root", str(tmp_path / "data"), "--json"]
    result = eqm(*args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["ytf"]
    dropped = sum("Ann_A/1" in row for row in rows[1:])
    assert data["missing_videos"] == 1 and data["pairs_dropped"] == dropped > 0
    assert data["pairs"] == 40 - dropped
    assert (run / "eval" / "ytf_missing.txt").read_text() == "Ann_A/1\n"
    (base / "splits.txt").write_text(rows[0] + "\n1, 0, Ann_A/0, Bob_B/0\n")
    result = eqm(*args)
    assert result.exit_code == 2
    assert "splits.txt:2: expected 5 comma-separated fields, got 4" in result.stderr


@pytest.mark.parametrize(
    ("header", "row"),
    [  # the reading of the published header: lengths and a distance between
        ("split number, first name, second name, first length, second length, distance, "
         "is same person", "{split}, {first}, {second}, 120, 87, 1500.25, {same}"),
        # the layout other tools read the published rows in (pair id second, 5 fields)
        ("Split_Number,Pair_ID,First_Name,Second_Name,Is_Same",
         "{split},{pair},{first},{second},{same}"),
    ],
)
def test_ytf_published_header_and_variants_give_the_same_result(
    untrained_run: Path, tmp_path: Path, header: str, row: str, eqm
) -> None:
    """Issue 20, broken 9: the header of the published splits.txt (and variants in
    circulation) is read by column name; the result equals the plain file's on every split."""
    run = untrained_run
    base = make_ytf(tmp_path / "data")
    args = ["eval", str(run), "--ytf", "--data-root", str(tmp_path / "data"), "--json",
            "--no-cache"]
    plain = eqm(*args)
    assert plain.exit_code == 0, plain.output
    lines = (base / "splits.txt").read_text().splitlines()[1:]
    rows = [row.format(split=f[0], pair=k, first=f[1], second=f[2], same=f[3])
            for k, f in enumerate([x.strip() for x in line.split(",")] for line in lines)]
    (base / "splits.txt").write_text("\n".join([header, *rows]) + "\n")
    published = eqm(*args)
    assert published.exit_code == 0, published.output
    expected, got = json.loads(plain.stdout)["ytf"], json.loads(published.stdout)["ytf"]
    assert got["pairs"] == 40 and got["folds"] == 10
    assert got["fold_accuracies"] == expected["fold_accuracies"]
    assert got["auc"] == expected["auc"]


def test_ytf_split_numbers_that_are_not_positive_name_the_file_and_column(
    untrained_run: Path, tmp_path: Path, eqm
) -> None:
    """Issue 20, degraded: all-negative split numbers are one sentence naming the file,
    the line and the column; a file with one split only says so."""
    run = untrained_run
    base = make_ytf(tmp_path / "data")
    lines = (base / "splits.txt").read_text().splitlines()
    (base / "splits.txt").write_text("\n".join([lines[0], *("-" + x for x in lines[1:])]))
    args = ["eval", str(run), "--ytf", "--data-root", str(tmp_path / "data")]
    result = eqm(*args)
    assert result.exit_code == 2
    assert f"{base / 'splits.txt'}:2: column 'split number' must be a positive" in result.stderr
    (base / "splits.txt").write_text("\n".join([lines[0], *("1" + x[x.index(","):]
                                                       for x in lines[1:])]))
    result = eqm(*args)
    assert result.exit_code == 2
    assert "every pair is in split 1; the protocol needs at least 2 splits" in result.stderr


def test_feature_cache_is_keyed_by_the_images_not_their_names(
    untrained_run: Path, tmp_path: Path, eqm
) -> None:
    """Issue 20, broken 2: a second data root with the same names (every frame black), or a
    frame replaced in place, is embedded again, never served the first set's features."""
    run = untrained_run
    make_ytf(tmp_path / "ok")
    black = make_ytf(tmp_path / "black")
    frames = sorted(black.rglob("*.jpg"))
    for frame in frames:
        Image.new("RGB", (20, 20)).save(frame)

    def ytf(root: str, *extra: str) -> dict:
        result = eqm("eval", run, "--ytf", "--data-root", tmp_path / root, "--json", *extra)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["ytf"]

    assert ytf("ok")["auc"] > 0.5
    cached_black, fresh_black = ytf("black"), ytf("black", "--no-cache")
    assert cached_black["auc"] == fresh_black["auc"] == 0.5
    Image.new("RGB", (20, 20), (255, 255, 255)).save(frames[0])  # one frame changed in place
    os.utime(frames[0], ns=(1, 1))
    assert ytf("black")["auc"] == ytf("black", "--no-cache")["auc"] != 0.5
    assert len(list((run / "eval" / "cache").glob("ytf-*.npy"))) == 3


# ------------------------------------------------------------------------- MegaFace
def _feature_file(path: Path, vector: np.ndarray) -> None:
    """The devkit's feature file: int32 rows, cols, step, type (5 = CV_32F), then floats."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<4i", len(vector), 1, 4, 5) + vector.astype("<f4").tobytes())


def make_megaface_lists(root: Path, probes: int = 12, distractors: int = 30) -> dict:
    lists = root / "megaface" / "devkit" / "templatelists"
    lists.mkdir(parents=True)
    ids = [f"Actor_{k % 3}" for k in range(probes)]
    paths = [f"{ids[k]}/{ids[k]}_{k}.jpg" for k in range(probes)]
    (lists / "facescrub_features_list.json").write_text(json.dumps({"id": ids, "path": paths}))
    names = [f"{k % 7}/{k}@N00/{k}_0.jpg" for k in range(distractors)]
    for size in (10, distractors):
        (lists / f"megaface_features_list.json_{size}_1").write_text(
            json.dumps({"path": names[:size]})
        )
    return {"ids": ids, "paths": paths, "names": names}


def test_megaface_precomputed_devkit_features(untrained_run: Path, tmp_path: Path, eqm) -> None:
    run = untrained_run
    lists = make_megaface_lists(tmp_path / "data")
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 8))
    probe_features = np.stack(
        [centres[int(i[-1])] + 0.9 * rng.normal(size=8) for i in lists["ids"]]
    )
    distractor_features = rng.normal(size=(30, 8))
    features = tmp_path / "features"
    for path, vector in zip(lists["paths"], probe_features, strict=True):
        _feature_file(features / "facescrub" / f"{path}_algo.bin", vector)
    for path, vector in zip(lists["names"], distractor_features, strict=True):
        _feature_file(features / "megaface" / f"{path}_algo.bin", vector)
    args = ["eval", str(run), "--megaface", "--data-root", str(tmp_path / "data"),
            "--megaface-sizes", "10,30", "--megaface-features", str(features),
            "--megaface-feature-suffix", "_algo.bin", "--json"]
    result = eqm(*args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["megaface"]
    unit = probe_features / np.linalg.norm(probe_features, axis=1, keepdims=True)
    dunit = distractor_features / np.linalg.norm(distractor_features, axis=1, keepdims=True)
    for size in (10, 30):
        best = (unit @ dunit[:size].T).max(axis=1)
        hits = [unit[g] @ unit[p] >= best[p] for g in range(12) for p in range(12)
                if g != p and lists["ids"][g] == lists["ids"][p]]
        assert data["rank1"][str(size)] == pytest.approx(np.mean(hits))
        assert data["tar_at_far_1e6"][str(size)] is None  # 360 impostor pairs < 1e6
    assert data["distractors"] == {"10": 10, "30": 30} and data["features"] == "precomputed"
    (features / "megaface" / f"{lists['names'][3]}_algo.bin").write_bytes(b"\0" * 20)
    bad = eqm(*args[:-1], "--no-cache")
    assert bad.exit_code == 2 and "not a devkit float32 feature file" in bad.stderr


@pytest.mark.usefixtures("skimage_installed")
def test_megaface_images_with_json_boxes_and_a_missing_image(
    untrained_run: Path, tmp_path: Path, eqm
) -> None:
    run = untrained_run
    lists = make_megaface_lists(tmp_path / "data", probes=6, distractors=12)
    root = tmp_path / "data" / "megaface"
    rng = np.random.default_rng(3)
    for k, path in enumerate(lists["paths"]):
        (root / "facescrub_images" / path).parent.mkdir(parents=True, exist_ok=True)
        _frame(int(lists["ids"][k][-1]), rng, size=40).save(root / "facescrub_images" / path)
    for k, path in enumerate(lists["names"][1:], start=1):  # the first distractor is missing
        file = root / "megaface_images" / path
        file.parent.mkdir(parents=True, exist_ok=True)
        _frame(3 + k % 3, rng, size=40).save(file)
        box = {"bounding_box": {"x": 5, "y": 4, "width": 30, "height": 32}}
        if k % 2:
            box["landmarks"] = {"0": {"x": 14, "y": 16}, "1": {"x": 26, "y": 16}}
        file.with_name(file.name + ".json").write_text(json.dumps(box))
    result = eqm("eval", str(run), "--megaface", "--data-root", str(tmp_path / "data"),
                 "--megaface-sizes", "10,12")
    assert result.exit_code == 0, result.output
    assert "MegaFace challenge 1" in result.stdout
    data = json.loads((run / "eval" / "megaface.json").read_text())
    assert data["distractors"] == {"10": 9, "12": 11} and data["missing_images"] == 1
    missing = (run / "eval" / "megaface_missing.txt").read_text()
    assert missing == f"megaface_images/{lists['names'][0]}\n"
    assert 0.0 <= data["rank1"]["10"] <= 1.0


def test_verify_with_fold_labels_equals_contiguous_folds() -> None:
    rng = np.random.default_rng(4)
    scores, same = rng.normal(size=100), rng.random(100) < 0.5
    blocks = np.repeat(np.arange(10), 10)
    order = rng.permutation(100)
    by_label = verify(scores[order], same[order], fold_of=blocks[order])
    contiguous = verify(scores, same, folds=10)
    assert by_label.fold_accuracies == pytest.approx(contiguous.fold_accuracies)
    assert by_label.fold_thresholds == pytest.approx(contiguous.fold_thresholds)
