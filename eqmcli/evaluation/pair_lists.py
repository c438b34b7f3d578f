"""Parsing of pairs files: LFW's official ``pairs.txt`` and the user's ``path_a path_b label``.

LFW ``pairs.txt`` (View 2): a header ``10 300`` (sets, pairs per set), then per set 300
matched lines ``name i j`` followed by 300 mismatched lines ``name1 i name2 j``; image
``i`` of ``name`` is ``<root>/<name>/<name>_<iiii>.jpg``. View 1 (``pairsDevTrain.txt``,
``pairsDevTest.txt``) has a header with just ``N``, then N matched and N mismatched lines.

A user's pairs file has lines ``path_a path_b label`` (label 1/0, true/false, same/diff);
relative paths are taken from an images root. ``#`` starts a comment; blank lines are skipped.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqmcli.errors import UserError

_TRUE = {"1", "true", "same", "match", "matched", "yes", "pos", "positive"}
_FALSE = {
    "0",
    "-1",
    "false",
    "diff",
    "different",
    "mismatch",
    "mismatched",
    "no",
    "neg",
    "negative",
}


@dataclass
class PairList:
    """Pairs of image files: ``pairs`` (P, 2) int64 indices into ``paths``, ``issame`` (P,) bool.

    ``folds`` is the number of contiguous blocks of pairs the protocol uses.
    """

    paths: list[Path]
    pairs: np.ndarray
    issame: np.ndarray
    folds: int

    def __len__(self) -> int:
        return int(self.issame.size)


def lfw_image_path(root: Path, name: str, number: int) -> Path:
    """``<root>/<Name>/<Name>_<NNNN>.jpg`` (LFW's file naming, 1-based numbers)."""
    return root / name / f"{name}_{number:04d}.jpg"


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise UserError(f"pairs file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text pairs file (not UTF-8)") from None
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append((number, line))
    if not out:
        raise UserError(f"pairs file {path} holds no pairs")
    return out


def _int_header(line: str) -> list[int] | None:
    parts = line.split()
    if 1 <= len(parts) <= 2 and all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    return None


def _index_of(paths: list[Path], index: dict[Path, int], path: Path) -> int:
    if path not in index:
        index[path] = len(paths)
        paths.append(path)
    return index[path]


def _stratified_order(issame: np.ndarray, folds: int) -> np.ndarray:
    """Reorder N matched then N mismatched pairs into ``folds`` blocks of matched + mismatched."""
    pos = np.nonzero(issame)[0]
    neg = np.nonzero(~issame)[0]
    blocks = [
        np.concatenate((p, q))
        for p, q in zip(np.array_split(pos, folds), np.array_split(neg, folds), strict=True)
    ]
    return np.concatenate(blocks)


def read_lfw_pairs(
    pairs_file: str | Path, lfw_root: str | Path, *, check_files: bool = True
) -> PairList:
    """Parse LFW's ``pairs.txt`` (View 2 ``10 300`` or View 1 ``N`` header) against ``lfw_root``.

    View 2 keeps the file order: its sets are the 10 folds. View 1 has one set of N
    matched then N mismatched pairs; it is regrouped into 10 contiguous folds of N/10
    matched then N/10 mismatched pairs (file order kept within each class), so every
    fold holds both classes. Raises `UserError` naming the line at fault or missing images.
    """
    pairs_file, root = Path(pairs_file), Path(lfw_root)
    lines = _lines(pairs_file)
    header = _int_header(lines[0][1])
    if header is None:
        raise UserError(
            f"{pairs_file}:{lines[0][0]}: expected an LFW header ('10 300' or 'N'), "
            f"got {lines[0][1]!r}"
        )
    sets, per_set = (1, header[0]) if len(header) == 1 else (header[0], header[1])
    body = lines[1:]
    expected = sets * 2 * per_set
    if len(body) != expected:
        raise UserError(
            f"{pairs_file}: header promises {sets} set(s) of {per_set} matched + {per_set} "
            f"mismatched pairs ({expected} lines) but the file has {len(body)} pair lines"
        )
    paths: list[Path] = []
    index: dict[Path, int] = {}
    pairs = np.empty((expected, 2), dtype=np.int64)
    issame = np.empty(expected, dtype=bool)
    for k, (number, line) in enumerate(body):
        want_match = (k % (2 * per_set)) < per_set
        parts = line.split()
        try:
            if len(parts) == 3:
                a = lfw_image_path(root, parts[0], int(parts[1]))
                b = lfw_image_path(root, parts[0], int(parts[2]))
                same = True
            elif len(parts) == 4:
                a = lfw_image_path(root, parts[0], int(parts[1]))
                b = lfw_image_path(root, parts[2], int(parts[3]))
                same = False
            else:
                raise ValueError
        except ValueError:
            raise UserError(
                f"{pairs_file}:{number}: expected 'name i j' or 'name1 i name2 j', got {line!r}"
            ) from None
        if same != want_match:
            kind = "matched" if want_match else "mismatched"
            raise UserError(
                f"{pairs_file}:{number}: expected a {kind} pair here (LFW layout), got {line!r}"
            )
        pairs[k] = (_index_of(paths, index, a), _index_of(paths, index, b))
        issame[k] = same
    folds = sets
    if sets == 1:
        folds = min(10, per_set)
        order = _stratified_order(issame, folds)
        pairs, issame = pairs[order], issame[order]
    if check_files:
        check_exists(paths, f"{pairs_file} (images under {root})")
    return PairList(paths, pairs, issame, folds)


def _label(token: str) -> bool | None:
    low = token.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    return None


def read_pairs_file(
    pairs_file: str | Path,
    images_root: str | Path | None = None,
    *,
    folds: int = 10,
    check_files: bool = True,
) -> PairList:
    """Parse a pairs file: LFW's format (detected by its header) or ``path_a path_b label`` lines.

    Relative paths are resolved against ``images_root`` (default: the pairs file's
    folder; for LFW's format ``<folder>/lfw`` when it exists). Paths with spaces may be
    quoted. The generic format keeps the file order and uses ``folds`` contiguous folds.
    """
    pairs_file = Path(pairs_file)
    lines = _lines(pairs_file)
    if _int_header(lines[0][1]) is not None:
        if images_root is None:
            images_root = (
                pairs_file.parent / "lfw"
                if (pairs_file.parent / "lfw").is_dir()
                else pairs_file.parent
            )
        return read_lfw_pairs(pairs_file, images_root, check_files=check_files)
    root = Path(images_root) if images_root is not None else pairs_file.parent
    paths: list[Path] = []
    index: dict[Path, int] = {}
    pair_rows: list[tuple[int, int]] = []
    labels: list[bool] = []
    for number, line in lines:
        try:
            parts = shlex.split(line) if ('"' in line or "'" in line) else line.split()
        except ValueError:
            parts = []
        label = _label(parts[-1]) if len(parts) == 3 else None
        if label is None:
            raise UserError(
                f"{pairs_file}:{number}: expected 'path_a path_b label' (label 1/0), got {line!r}"
            )
        a, b = (Path(p) if Path(p).is_absolute() else root / p for p in parts[:2])
        pair_rows.append((_index_of(paths, index, a), _index_of(paths, index, b)))
        labels.append(label)
    if len(labels) < folds:
        raise UserError(
            f"{pairs_file}: {len(labels)} pairs is fewer than the {folds} folds of the protocol"
        )
    if check_files:
        check_exists(paths, f"{pairs_file} (relative to {root})")
    return PairList(
        paths, np.asarray(pair_rows, dtype=np.int64), np.asarray(labels, dtype=bool), folds
    )


def check_exists(paths: list[Path], source: str, advice: str = "") -> None:
    """Raise one `UserError` naming the missing images (first few) of a pairs list, with
    ``advice`` (e.g. "; pass --missing skip ...") at its end."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(
            f"{len(missing)} image(s) named in {source} do not exist: {shown}{more}{advice}")
