"""`eqm data stats`, `eqm data convert` and `eqm bench pipeline` through the Typer app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def make_folder(root: Path, sizes: list[int]) -> Path:
    """root/id<c>/<k>.jpg with ``sizes[c]`` 8 px JPEGs."""
    for c, n in enumerate(sizes):
        (root / f"id{c:02d}").mkdir(parents=True)
        for k in range(n):
            pixels = np.full((8, 8, 3), (c * 30 + k) % 256, dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"id{c:02d}" / f"{k:03d}.jpg")
    return root


def test_stats_image_folder_json_and_table(tmp_path: Path, eqm) -> None:
    folder = make_folder(tmp_path / "faces", [1, 3, 90])
    result = eqm("data", "stats", str(folder), "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["kind"] == "image-folder"
    assert stats["images"] == 94 and stats["classes"] == 3
    assert stats["classes_under_80"] == 2
    assert stats["quantiles"]["min"] == 1 and stats["quantiles"]["max"] == 90
    assert stats["quantiles"]["median"] == 3
    assert sum(b["classes"] for b in stats["histogram"]) == 3
    table = eqm("data", "stats", str(folder))
    assert table.exit_code == 0, table.output
    assert "classes with < 80 images" in table.stdout and "80-" in table.stdout


def test_convert_both_ways_and_stats_of_record(tmp_path: Path, eqm) -> None:
    folder = make_folder(tmp_path / "faces", [2, 3])
    rec_dir = tmp_path / "rec"
    result = eqm("data", "convert", str(folder), str(rec_dir))
    assert result.exit_code == 0, result.output
    assert {p.name for p in rec_dir.iterdir()} == {"train.rec", "train.idx", "property"}
    assert (rec_dir / "property").read_text().strip() == "2,8,8"
    stats = json.loads(eqm("data", "stats", str(rec_dir), "--json").stdout)
    assert stats["kind"] == "record" and stats["images"] == 5 and stats["classes"] == 2

    back = tmp_path / "back"
    result = eqm("data", "convert", str(rec_dir), str(back))
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(back).as_posix() for p in back.rglob("*.jpg"))
    assert files == ["0/00000001.jpg", "0/00000002.jpg", "1/00000003.jpg", "1/00000004.jpg",
                     "1/00000005.jpg"]
    assert (back / "1/00000005.jpg").read_bytes() == (folder / "id01/002.jpg").read_bytes()
    # refuses to overwrite a non-empty folder
    again = eqm("data", "convert", str(folder), str(rec_dir))
    assert again.exit_code == 2 and str(rec_dir) in again.output


def test_convert_refuses_empty_images_listing_them(tmp_path: Path, eqm) -> None:
    folder = make_folder(tmp_path / "faces", [2, 3])
    (folder / "id00" / "000.jpg").write_bytes(b"")
    (folder / "id01" / "002.jpg").write_bytes(b"")
    result = eqm("data", "convert", str(folder), str(tmp_path / "rec"))
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "2 image(s) in" in said and "are empty (0 bytes)" in said
    assert "id00/000.jpg, id01/002.jpg" in said and "Traceback" not in said
    assert not (tmp_path / "rec").exists() and not (tmp_path / "rec.partial").exists()


def test_stats_of_recipes(tmp_path: Path, eqm) -> None:
    folder = make_folder(tmp_path / "faces", [4, 4])
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"train": {
        "kind": "image-folder", "root": str(folder), "holdout_fraction": 0.25}}}))
    stats = json.loads(eqm("data", "stats", str(recipe), "--json").stdout)
    assert stats["train_images"] == 6 and stats["test_images"] == 2 and stats["images"] == 8

    synthetic = tmp_path / "synthetic.yaml"
    synthetic.write_text(yaml.safe_dump({"data": {"train": {
        "kind": "synthetic", "num_classes": 5, "min_images": 3, "max_images": 100,
        "image_size": 16, "test_images_per_class": 1}}}))
    result = eqm("data", "stats", str(synthetic), "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["kind"] == "synthetic" and stats["classes"] == 5
    assert stats["test_images"] == 5


def test_bad_paths_exit_2_naming_the_path(tmp_path: Path, eqm) -> None:
    missing = tmp_path / "no_such_folder"
    for args in (["data", "stats", str(missing)], ["data", "convert", str(missing), "out"]):
        result = eqm(*args)
        assert result.exit_code == 2, result.output
        assert str(missing) in result.output
        assert "Traceback" not in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.rec").write_bytes(b"\0" * 64)
    (broken / "train.idx").write_text("0\t0\n")
    result = eqm("data", "stats", str(broken))
    assert result.exit_code == 2 and "bad magic" in result.output


def test_bench_pipeline_smoke(tmp_path: Path, eqm) -> None:
    out = tmp_path / "pipeline.json"
    result = eqm("bench", "pipeline", "--images", "32", "--size", "32", "--batch", "8",
                 "--workers", "0", "--json", str(out))
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    assert {r["source"] for r in rows} == {"record", "image-folder"}
    assert all(r["images_per_s"] > 0 and r["images"] == 32 for r in rows)
    bad = eqm("bench", "pipeline", "--workers", "a,b")
    assert bad.exit_code == 2 and "--workers" in bad.output
