"""LFW folder + official pairs.txt (View 2 `10 N` and View 1 `N`), and user pairs files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eqmcli.errors import UserError
from eqmcli.evaluation.pair_lists import read_lfw_pairs, read_pairs_file
from eqmcli.evaluation.pair_sets import read_lfw, read_pairs

NAMES = ["Aaron_Eckhart", "Bill_Gates", "Cher", "Dan_Quayle"]


def _make_lfw(root: Path, per_person: int = 3) -> dict[Path, tuple[int, int, int]]:
    """Tiny aligned LFW tree; each image a flat color encoding (person, number)."""
    from PIL import Image

    colors = {}
    for p, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for n in range(1, per_person + 1):
            color = (40 + 50 * p, 30 + 60 * n, 128)
            path = root / name / f"{name}_{n:04d}.jpg"
            Image.new("RGB", (6, 6), color).save(path, quality=95)
            colors[path] = color
    return colors


def _pairs_lines(
    sets: int, per_set: int
) -> tuple[list[str], list[tuple[str, int, str, int, bool]]]:
    """pairs.txt body lines and the expected (name_a, i, name_b, j, same) list, in order."""
    lines, expected = [], []
    rng = np.random.default_rng(0)
    for _ in range(sets):
        for _ in range(per_set):
            name = NAMES[rng.integers(len(NAMES))]
            i, j = rng.choice([1, 2, 3], size=2, replace=False)
            lines.append(f"{name}\t{i}\t{j}")
            expected.append((name, int(i), name, int(j), True))
        for _ in range(per_set):
            a, b = rng.choice(len(NAMES), size=2, replace=False)
            i, j = rng.integers(1, 4, size=2)
            lines.append(f"{NAMES[a]}\t{i}\t{NAMES[b]}\t{j}")
            expected.append((NAMES[a], int(i), NAMES[b], int(j), False))
    return lines, expected


def _check(vset_pairs, vset_paths, issame, expected, root: Path) -> None:
    got = []
    for (a, b), same in zip(vset_pairs.tolist(), issame.tolist(), strict=True):
        pa, pb = vset_paths[a], vset_paths[b]
        got.append((pa.parent.name, int(pa.stem[-4:]), pb.parent.name, int(pb.stem[-4:]), same))
        assert pa.parent.parent == root
    assert got == expected


def test_lfw_view2_pairs_in_order(tmp_path: Path) -> None:
    root = tmp_path / "lfw"
    colors = _make_lfw(root)
    lines, expected = _pairs_lines(10, 3)
    pairs_txt = tmp_path / "pairs.txt"
    pairs_txt.write_text("10\t3\n" + "\n".join(lines) + "\n")
    listed = read_lfw_pairs(pairs_txt, root)
    assert listed.folds == 10 and len(listed) == 60
    _check(listed.pairs, listed.paths, listed.issame, expected, root)
    # The VerificationSet decodes the right image for each index.
    vset = read_lfw(root, pairs_txt)
    for k in (0, 4, 59):
        a, _ = vset.pairs[k]
        mean = vset.images[a][0].float().mean(dim=(1, 2)).numpy()
        np.testing.assert_allclose(mean, colors[listed.paths[a]], atol=4)


def test_lfw_view1_single_set_regrouped_into_folds(tmp_path: Path) -> None:
    root = tmp_path / "lfw"
    _make_lfw(root)
    lines, expected = _pairs_lines(1, 20)
    pairs_txt = tmp_path / "pairsDevTest.txt"
    pairs_txt.write_text("20\n" + "\n".join(lines) + "\n")
    listed = read_lfw_pairs(pairs_txt, root)
    assert listed.folds == 10 and len(listed) == 40
    # Fold k = matched pairs 2k, 2k+1 then mismatched pairs 2k, 2k+1 (file order per class).
    pos, neg = expected[:20], expected[20:]
    regrouped = [e for k in range(10) for e in pos[2 * k : 2 * k + 2] + neg[2 * k : 2 * k + 2]]
    _check(listed.pairs, listed.paths, listed.issame, regrouped, root)


def test_lfw_errors_name_the_line_and_files(tmp_path: Path) -> None:
    root = tmp_path / "lfw"
    _make_lfw(root)
    lines, _ = _pairs_lines(2, 2)
    bad = tmp_path / "pairs.txt"
    bad.write_text("2 2\n" + "\n".join(lines[:-1]) + "\n")
    with pytest.raises(UserError, match="header promises"):
        read_lfw_pairs(bad, root)
    swapped = [lines[2], lines[1], lines[0], *lines[3:]]
    bad.write_text("2 2\n" + "\n".join(swapped) + "\n")
    with pytest.raises(UserError, match=r"pairs.txt:2: expected a matched pair"):
        read_lfw_pairs(bad, root)
    bad.write_text("1 1\nNobody 1 2\nCher 1 Bill_Gates 2\n")
    with pytest.raises(UserError, match="Nobody_0001.jpg"):
        read_lfw_pairs(bad, root)


def test_user_pairs_file(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _make_lfw(root)
    rows = [
        ("Cher/Cher_0001.jpg", "Cher/Cher_0002.jpg", "1"),
        ("Cher/Cher_0001.jpg", "Bill_Gates/Bill_Gates_0003.jpg", "0"),
        (str(root / "Dan_Quayle/Dan_Quayle_0001.jpg"), "Dan_Quayle/Dan_Quayle_0003.jpg", "true"),
    ] * 4
    text = "# my pairs\n\n" + "\n".join(" ".join(r) for r in rows) + "\n"
    pairs_file = tmp_path / "mine.txt"
    pairs_file.write_text(text)
    vset = read_pairs(pairs_file, root)
    assert vset.name == "mine" and vset.folds == 10
    assert vset.issame.tolist() == [True, False, True] * 4
    assert len(vset.images) == 5  # unique images only
    listed = read_pairs_file(pairs_file, root)
    for (a, b), (ra, rb, _) in zip(listed.pairs.tolist(), rows, strict=True):
        assert listed.paths[a] == (root / ra) and listed.paths[b] == (root / rb)
    pairs_file.write_text("a.jpg b.jpg maybe\n")
    with pytest.raises(UserError, match=r"mine.txt:1: expected 'path_a path_b label'"):
        read_pairs_file(pairs_file, root)
    pairs_file.write_text("\n".join(f"x{i}.jpg y.jpg 1" for i in range(10)))
    with pytest.raises(UserError, match="do not exist: .*x0.jpg"):
        read_pairs_file(pairs_file, root)


def test_pairs_flag_accepts_lfw_format(tmp_path: Path) -> None:
    root = tmp_path / "lfw"
    _make_lfw(root)
    lines, expected = _pairs_lines(10, 1)
    pairs_txt = tmp_path / "pairs.txt"
    pairs_txt.write_text("10 1\n" + "\n".join(lines) + "\n")
    listed = read_pairs_file(pairs_txt)  # images root defaults to the lfw/ beside it
    _check(listed.pairs, listed.paths, listed.issame, expected, root)
