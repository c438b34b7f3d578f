"""`eqm embed MODEL INPUT --out FEATURES.npy`: features of image files, paths beside them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from interop_helpers import write_images


def test_folder_with_one_broken_image_lists_it_and_writes_the_rest(
    tmp_path: Path, tiny_run: Path, eqm
) -> None:
    images = write_images(tmp_path / "faces" / "alice", 2, size=24)
    images += write_images(tmp_path / "faces" / "bob", 2, size=24, seed=1)
    broken = tmp_path / "faces" / "bob" / "img_9.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "features.npy"
    result = eqm("embed", tiny_run, tmp_path / "faces", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    features = np.load(out)
    assert features.dtype == np.float32 and features.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    listed = (tmp_path / "features.paths.txt").read_text().splitlines()
    assert listed == [str(p) for p in sorted(images)]
    unreadable = (tmp_path / "features.unreadable.txt").read_text().splitlines()
    assert len(unreadable) == 1 and unreadable[0].startswith(f"{broken}\t")
    assert "1 unreadable image(s) skipped" in result.output and str(broken) in result.output
    final = [line for line in result.output.splitlines() if line.startswith("wrote")]
    assert "4 x 16 float32" in final[0] and final[0].endswith("images/s")


def test_text_file_order_raw_and_flip(tmp_path: Path, tiny_run: Path, eqm) -> None:
    images = write_images(tmp_path / "imgs", 3, size=24)
    listing = tmp_path / "list.txt"
    listing.write_text("# reversed\nimgs/img_2.png\n\nimgs/img_1.png\n" + f"{images[0]}\n")
    result = eqm("embed", tiny_run, listing, "--out", tmp_path / "a.npy", "--raw")
    assert result.exit_code == 0, result.output
    raw = np.load(tmp_path / "a.npy")
    assert (tmp_path / "a.paths.txt").read_text().splitlines() == [
        str(tmp_path / "imgs/img_2.png"), str(tmp_path / "imgs/img_1.png"), str(images[0])
    ]
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3), "--raw keeps the norm"
    result = eqm("embed", tiny_run, tmp_path / "imgs", "--out", tmp_path / "b.npy")
    assert result.exit_code == 0, result.output
    folder_order = np.load(tmp_path / "b.npy")
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(folder_order[::-1], unit, atol=1e-5)
    result = eqm("embed", tiny_run, tmp_path / "imgs", "--out", tmp_path / "c.npy", "--flip")
    assert result.exit_code == 0 and "flip-test" in result.output
    flipped = np.load(tmp_path / "c.npy")
    assert flipped.shape == (3, 16) and not np.allclose(flipped, folder_order, atol=1e-4)


def test_other_image_sizes_are_resized_with_a_note(tmp_path: Path, tiny_run: Path, eqm) -> None:
    write_images(tmp_path / "big", 2, size=40)
    result = eqm("embed", tiny_run / "checkpoints" / "last.pt", tmp_path / "big",
                 "--out", tmp_path / "f.npy")
    assert result.exit_code == 0, result.output
    assert "(40×40) were resized to the model's input size (24×24)" in result.output
    assert np.load(tmp_path / "f.npy").shape == (2, 16)


def test_the_resize_note_names_the_size_that_was_resized(
    tmp_path: Path, tiny_run: Path, eqm
) -> None:
    write_images(tmp_path / "mixed" / "a", 2, size=24)  # the model's size, embedded first
    write_images(tmp_path / "mixed" / "b", 1, size=40)
    result = eqm("embed", tiny_run, tmp_path / "mixed", "--out", tmp_path / "f.npy",
                 "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert "(40×40) were resized to the model's input size (24×24)" in result.output
    assert "(24×24) were resized" not in result.output


@pytest.mark.parametrize(
    ("make_input", "out_name", "message"),
    [
        (lambda p: write_images(p / "x", 1, size=24) and p / "x", "f.bin", "must end in .npy"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "f.npy", "holds no images"),
        (lambda p: p / "nowhere", "f.npy", "input not found"),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(
    tmp_path: Path, tiny_run: Path, make_input, out_name: str, message: str, eqm
) -> None:
    result = eqm("embed", tiny_run, make_input(tmp_path), "--out", tmp_path / out_name)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / out_name).exists()


def test_names_with_a_control_character_or_undecodable_bytes_are_refused_listing_them(
    tmp_path: Path, tiny_run: Path, eqm
) -> None:
    """FEATURES.paths.txt holds one path per line: a newline in a name used to give 5 rows
    and 7 lines (and keep the unreadable image's placeholder row)."""
    faces = tmp_path / "faces"
    write_images(faces, 2, size=24)
    (faces / "img_0.png").rename(faces / "two\nlines.png")
    (faces / "img_1.png").rename(faces / "tab\there.png")
    (faces / "broken\nname.png").write_bytes(b"not an image")
    os.close(os.open(os.fsencode(faces) + b"/latin1_\xe9.png", os.O_CREAT | os.O_WRONLY))
    out = tmp_path / "features.npy"
    result = eqm("embed", tiny_run, faces, "--out", out, "--device", "cpu")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "4 image path(s) hold a control character" in said, said
    assert "two\\nlines.png" in said and "tab\\there.png" in said and "\\udce9" in said
    assert "Traceback" not in result.output and not list(tmp_path.glob("features*"))


def test_rows_and_paths_pair_up_and_unreadable_rows_are_dropped(
    tmp_path: Path, tiny_run: Path, eqm
) -> None:
    faces = tmp_path / "faces"
    images = write_images(faces, 3, size=24)
    (faces / "broken.png").write_bytes(b"not an image")
    (faces / "dangling.png").symlink_to(faces / "nowhere.png")
    (faces / "loop.png").symlink_to(faces / "loop.png")
    listing = tmp_path / "list.txt"
    listing.write_text("faces/broken.png\nfaces/img_0.png\nfaces/broken.png\nfaces/img_2.png\n")
    for source, expected in ((faces, [images[0], images[1], images[2]]),
                             (listing, [images[0], images[2]])):
        out = tmp_path / f"{source.stem}.npy"
        result = eqm("embed", tiny_run, source, "--out", out, "--device", "cpu")
        assert result.exit_code == 0, result.output
        listed = out.with_suffix(".paths.txt").read_text().splitlines()
        assert listed == [str(p) for p in expected] and np.load(out).shape == (len(listed), 16)
        unreadable = out.with_suffix(".unreadable.txt").read_text().splitlines()
        names = sorted(Path(line.split("\t")[0]).name for line in unreadable)
        wanted = ["broken.png", "broken.png"] if source == listing else [
            "broken.png", "dangling.png", "loop.png"]
        assert names == wanted, unreadable
    result = eqm("embed", tiny_run, faces, "--out", tmp_path / "x.npy", "--device", "cpu")
    assert "dangling.png" in result.output
    assert "loop.png" in result.output, "the skipped links are listed"


def test_a_full_disk_leaves_no_features_without_their_paths(
    tmp_path: Path, tiny_run: Path, full_disk, eqm
) -> None:
    """The features used to be renamed into place before the paths file failed to write."""
    write_images(tmp_path / "faces", 2, size=24)
    full_disk(".paths.txt.")
    out = tmp_path / "features.npy"
    result = eqm("embed", tiny_run, tmp_path / "faces", "--out", out, "--device", "cpu")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "no space left on device" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"], "no file, no temporary"
