"""Verification sets: pairs of face images labelled same / different identity.

This module holds the `VerificationSet` container every verification source produces
(the synthetic held-out identities, InsightFace `.bin` files, the LFW folder + pairs.txt,
a user's pairs file). Readers for the file formats live below the dataclass.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset

from eqmcli.atomic import atomic_write
from eqmcli.data.decode import DecodeError, ImageFiles, decode_file, decode_image, encode_jpeg
from eqmcli.data.synthetic import synthetic_pairs
from eqmcli.errors import UserError
from eqmcli.evaluation.checksums import sha256_file
from eqmcli.evaluation.pair_lists import PairList, check_exists, read_lfw_pairs, read_pairs_file


# ------------------------------------------------------------------ the container
@dataclass
class VerificationSet:
    """Image pairs for the 10-fold verification protocol (docs/reference.md §3).

    `images` is a Dataset of `(uint8 (3, H, W) tensor, label)` items (the label is
    ignored); `pairs` an int64 array `(P, 2)` of indices into `images`; `issame` a bool
    array `(P,)`, True for a matched (same-identity) pair. Folds are `folds` contiguous
    blocks of pairs, in order (no shuffling), as in the LFW protocol, unless `fold_of`
    (int `(P,)`, 0 ... folds - 1) assigns them (pairs skipped for a missing image keep their
    fold). `fingerprint` identifies the pairs and their images (`pairs_fingerprint`; for
    the synthetic set its data parameters), so that results on different pairs are never
    compared; None: unknown. `unscored` (bool `(P,)`) marks pairs that name a missing image
    and are counted as failures (``--missing count-wrong``); `missing` says what was done.
    `pair_names` (`(P, 2)` str) names each pair's images as the user knows them (paths).
    """

    name: str
    images: Dataset
    pairs: np.ndarray
    issame: np.ndarray
    folds: int = 10
    fingerprint: str | None = None
    fold_of: np.ndarray | None = None
    unscored: np.ndarray | None = None
    missing: MissingImages | None = None
    pair_names: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.pairs = np.asarray(self.pairs, dtype=np.int64)
        self.issame = np.asarray(self.issame, dtype=bool)
        if self.pairs.ndim != 2 or self.pairs.shape[1] != 2:
            raise ValueError(f"{self.name}: pairs must have shape (P, 2), got {self.pairs.shape}")
        if self.issame.shape != (len(self.pairs),):
            raise ValueError(
                f"{self.name}: issame has shape {self.issame.shape}, expected ({len(self.pairs)},)"
            )
        if self.folds < 1:
            raise ValueError(f"{self.name}: folds must be >= 1, got {self.folds}")

    @property
    def num_pairs(self) -> int:
        """Number of pairs P."""
        return int(len(self.pairs))

    def counted_wrong(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` (cosines) with every `unscored` pair put on the wrong side of any
        threshold `verify` picks (-2 for a matched pair, +2 for a mismatched one; the
        thresholds come from the scored pairs, so they lie inside (-2, 2))."""
        if self.unscored is None:
            return scores
        wrong = np.where(self.issame, -2.0, 2.0).astype(scores.dtype)
        return np.where(self.unscored, wrong, scores)

    def image_names(self) -> np.ndarray:
        """`(P, 2)` names of each pair's images: `pair_names`, else ``<set>#<image index>``."""
        if self.pair_names is not None:
            return self.pair_names
        return np.char.add(f"{self.name}#", self.pairs.astype(str))


def contiguous_folds(n: int, folds: int) -> np.ndarray:
    """The fold (0-based, int64 `(n,)`) of each of `n` pairs in `folds` contiguous blocks,
    the first ``n % folds`` one pair longer (`eqmcli.evaluation.verification.fold_bounds`)."""
    blocks = np.array_split(np.arange(n), folds)
    return np.concatenate([np.full(len(b), k, dtype=np.int64) for k, b in enumerate(blocks)])


#: What `eqm eval --missing` may do with pairs that name a missing image.
MISSING_POLICIES: tuple[str, ...] = ("error", "skip", "count-wrong")


def check_missing_policy(missing: str) -> None:
    """Refuse a ``--missing`` value that is not one of `MISSING_POLICIES`, in one sentence."""
    if missing not in MISSING_POLICIES:
        raise UserError(f"--missing must be one of {', '.join(MISSING_POLICIES)}, "
                        f"got {str(missing)[:40]!r}")


@dataclass
class MissingImages:
    """Pairs that name an image file that does not exist, and what was done with them:
    ``policy`` "skip" (left out) or "count-wrong" (kept as failures)."""

    policy: str
    pairs: int
    images: list[str]

    def to_dict(self) -> dict[str, object]:
        """The ``missing`` entry of a result JSON."""
        return {"policy": self.policy, "pairs": self.pairs, "images": len(self.images)}


FINGERPRINT_DIGITS = 20


def pairs_fingerprint(
    image_digests: Sequence[str], pairs: np.ndarray, issame: np.ndarray, folds: int
) -> str:
    """A short hash (hex) of a pair list: the folds, then per pair in order the content
    digests of its two images and its label. File names do not enter, so a copy of the
    images elsewhere, or a `.bin` made from them by `eqm data make-bin` (JPEG bytes are
    copied as they are), has the same fingerprint; another image or order does not."""
    digest = hashlib.sha256(f"folds {folds}\n".encode())
    for (a, b), same in zip(np.asarray(pairs).tolist(), np.asarray(issame).tolist(),
                            strict=True):
        digest.update(f"{image_digests[a]} {image_digests[b]} {int(same)}\n".encode())
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


def parameters_fingerprint(kind: str, parameters: dict[str, object]) -> str:
    """A short hash (hex) of a generated set's parameters (the synthetic pairs' seed, sizes...)."""
    text = f"{kind} " + " ".join(f"{k}={parameters[k]!r}" for k in sorted(parameters))
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_DIGITS]


# ---------------------------------------------------------------------------------------
# Readers: InsightFace .bin (restricted unpickler), LFW folder + pairs.txt, pairs files.
# ---------------------------------------------------------------------------------------
class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list (never imported, never called)."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


def _latin1_encode(text: object, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of bytes use it: str -> latin-1 bytes only."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected _codecs.encode call in a .bin file")
    return text.encode("latin-1")


def _safe_bytes(*args: object) -> bytes:
    """`bytes(...)` limited to what pickles of byte strings use: (), (bytes,) or (str, latin1)."""
    if not args:
        return b""
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytes(args[0])
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str):
        return _latin1_encode(args[0], args[1])
    raise pickle.UnpicklingError("unexpected bytes(...) call in a .bin file")


def _safe_bytearray(*args: object) -> bytearray:
    return bytearray(_safe_bytes(*args))


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals a verification .bin may reference, mapped to harmless callables.

    Byte strings pickled by Python 3 with protocol 2 use `_codecs.encode` / `bytes`;
    numpy arrays and scalars (JPEG buffers from `cv2.imencode`, `np.bool_` labels) use
    the numpy reconstruction helpers below. Python 2 `str` needs no global at all.
    """
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    def reconstruct(cls: object, *args: object) -> object:
        if cls is not np.ndarray:
            raise pickle.UnpicklingError("numpy _reconstruct of a non-ndarray class")
        return multiarray._reconstruct(cls, *args)

    allowed: dict[tuple[str, str], object] = {
        ("_codecs", "encode"): _latin1_encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("__builtin__", "builtins"):
        allowed[(module, "bytes")] = _safe_bytes
        allowed[(module, "bytearray")] = _safe_bytearray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    return allowed


class _BinUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals; anything else is refused."""

    def __init__(self, stream: BinaryIO, allowed: dict[tuple[str, str], object]) -> None:
        super().__init__(stream, encoding="bytes")
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> object:
        found = self._allowed.get((module, name))
        if found is None:
            raise _RefusedGlobal(module, name)
        return found

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed in a .bin file")


def _as_bytes(item: object) -> bytes | None:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    return None


def _as_bool(item: object) -> bool | None:
    if isinstance(item, (bool, np.bool_)):
        return bool(item)
    if isinstance(item, (int, np.integer)) and int(item) in (0, 1):
        return bool(item)
    return None


class EncodedImages(Dataset):
    """Encoded (JPEG/PNG) images held in memory, decoded lazily: item i -> (uint8 (3,H,W), 0)."""

    def __init__(self, blobs: list[bytes], source: str) -> None:
        self.blobs = blobs
        self.source = source

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            return decode_image(self.blobs[index]), 0
        except DecodeError as exc:
            raise UserError(f"{self.source}: image {index} cannot be decoded ({exc})") from None


def load_bin_pickle(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """Unpickle an InsightFace `.bin` safely -> (2P encoded images, issame bool (P,)).

    Only byte strings, bools, containers and the numpy/`_codecs` helpers that such files
    reference are allowed; any other global is refused with a `UserError` naming it, and
    nothing in the file is ever executed. Truncated or malformed files raise `UserError`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"verification file not found: {path}")
    try:
        with path.open("rb") as stream:
            payload = _BinUnpickler(stream, _allowed_globals()).load()
    except _RefusedGlobal as exc:
        raise UserError(
            f"{path} is not a plain InsightFace .bin: it references '{exc.qualified}', which such "
            "files never contain; refusing to load it (nothing in it was executed)"
        ) from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError) as exc:
        detail = str(exc) or type(exc).__name__
        raise UserError(
            f"{path} is truncated or corrupt: it is not a readable .bin pickle ({detail})"
        ) from None
    if not (isinstance(payload, (tuple, list)) and len(payload) == 2):
        raise UserError(
            f"{path} is not an InsightFace .bin: expected a pickled (images, issame) pair"
        )
    raw_bins, raw_issame = payload
    if not isinstance(raw_bins, (list, tuple)) or not isinstance(
        raw_issame, (list, tuple, np.ndarray)
    ):
        raise UserError(f"{path} is not an InsightFace .bin: expected lists of images and labels")
    blobs = [_as_bytes(item) for item in raw_bins]
    labels = [_as_bool(item) for item in raw_issame]
    if any(b is None for b in blobs):
        raise UserError(f"{path}: image {blobs.index(None)} is not a byte string")
    if any(v is None for v in labels):
        raise UserError(f"{path}: issame label {labels.index(None)} is not a bool")
    if len(blobs) != 2 * len(labels):
        raise UserError(
            f"{path}: {len(blobs)} images for {len(labels)} pairs; "
            "a .bin holds exactly 2 images per pair"
        )
    return blobs, np.asarray(labels, dtype=bool)  # type: ignore[arg-type]


def synthetic_verification_set(source: Any) -> VerificationSet:
    """The held-out pairs of a recipe's synthetic `data.train` source
    (`eqmcli.data.synthetic.synthetic_pairs`), fingerprinted by what renders them: the data
    seed, image size, difficulty and the verification identities, folds and pairs per fold."""
    images, pairs, issame, folds = synthetic_pairs(source)
    names = ("seed", "image_size", "difficulty", "verification_identities",
             "verification_folds", "verification_pairs_per_fold")
    parameters = {name: getattr(source, name, None) for name in names}
    return VerificationSet(
        name="synthetic", images=images, pairs=pairs, issame=issame, folds=folds,
        fingerprint=parameters_fingerprint("synthetic", parameters),
    )


def read_bin(path: str | Path, name: str | None = None, folds: int = 10) -> VerificationSet:
    """An InsightFace `.bin` as a `VerificationSet`; pair k is (image 2k, image 2k+1)."""
    path = Path(path)
    blobs, issame = load_bin_pickle(path)
    if issame.size < folds:
        raise UserError(
            f"{path}: {issame.size} pairs is fewer than the {folds} folds of the protocol"
        )
    pairs = np.arange(2 * issame.size, dtype=np.int64).reshape(-1, 2)
    fingerprint = pairs_fingerprint(
        [hashlib.sha256(blob).hexdigest() for blob in blobs], pairs, issame, folds)
    return VerificationSet(name or path.stem, EncodedImages(blobs, str(path)), pairs, issame,
                           folds, fingerprint)


def _listed_set(listed: PairList, name: str, source: str, missing: str) -> VerificationSet:
    """A parsed pairs list as a set of image files, fingerprinted by the files' contents.

    Pairs that name a missing image: ``missing`` "error" refuses the set in one sentence
    naming them; "skip" leaves them out (the others keep their folds); "count-wrong" keeps
    them as failures (`VerificationSet.unscored`). The fingerprint covers the pairs kept,
    a missing image counting as "absent"."""
    check_missing_policy(missing)
    present = np.array([path.is_file() for path in listed.paths], dtype=bool)
    names = np.array([str(path) for path in listed.paths])[listed.pairs]
    if present.all():
        return _image_set(name, listed.paths, listed.pairs, listed.issame, listed.folds,
                          pair_names=names)
    if missing == "error":
        check_exists(listed.paths, source,
                     advice="; pass --missing skip or --missing count-wrong to score the rest")
    lacking = ~(present[listed.pairs[:, 0]] & present[listed.pairs[:, 1]])
    fold_of = contiguous_folds(len(listed), listed.folds)
    report = MissingImages(missing, int(lacking.sum()),
                           [str(p) for p, ok in zip(listed.paths, present, strict=True) if not ok])
    keep = ~lacking if missing == "skip" else np.ones(len(listed), dtype=bool)
    if not (keep & ~lacking).any():
        raise UserError(f"every pair of {source} names a missing image: nothing to score")
    kept_folds, fold_of = np.unique(fold_of[keep], return_inverse=True)
    # images: the files that exist; a pair counted wrong points at the first of them
    index = np.cumsum(present) - 1
    pairs = np.where(lacking[:, None], 0, index[listed.pairs])[keep]
    return _image_set(
        name, [p for p, ok in zip(listed.paths, present, strict=True) if ok], pairs,
        listed.issame[keep], len(kept_folds), pair_names=names[keep], fold_of=fold_of,
        unscored=lacking[keep] if missing == "count-wrong" else None, missing=report,
    )


def _image_set(
    name: str, paths: list[Path], pairs: np.ndarray, issame: np.ndarray, folds: int, *,
    pair_names: np.ndarray, fold_of: np.ndarray | None = None,
    unscored: np.ndarray | None = None, missing: MissingImages | None = None,
) -> VerificationSet:
    """A `VerificationSet` of image files whose fingerprint covers the pairs as listed (a
    pair counted wrong contributes "absent" images)."""
    digests = [sha256_file(path) for path in paths]
    rows = [("absent", "absent") if unscored is not None and unscored[k] else
            (digests[a], digests[b]) for k, (a, b) in enumerate(pairs.tolist())]
    flat = [digest for row in rows for digest in row]
    flat_pairs = np.arange(2 * len(rows)).reshape(-1, 2)
    fingerprint = pairs_fingerprint(flat, flat_pairs, issame, folds)
    return VerificationSet(name, ImageFiles(paths), pairs, issame, folds, fingerprint,
                           fold_of, unscored, missing, pair_names)


def read_lfw(lfw_root: str | Path, pairs_file: str | Path, name: str = "lfw",
             missing: str = "error") -> VerificationSet:
    """An aligned LFW folder (`<Name>/<Name>_<NNNN>.jpg`) + official `pairs.txt` (View 1 or
    2); ``missing``: what to do with pairs naming a missing image (`MISSING_POLICIES`)."""
    listed = read_lfw_pairs(pairs_file, lfw_root, check_files=False)
    return _listed_set(listed, name, f"{pairs_file} (images under {lfw_root})", missing)


def read_pairs(
    pairs_file: str | Path, images_root: str | Path | None = None, name: str | None = None,
    missing: str = "error",
) -> VerificationSet:
    """A user's pairs file (`path_a path_b label`, or LFW's `pairs.txt` format) as a set;
    ``missing``: what to do with pairs naming a missing image (`MISSING_POLICIES`)."""
    listed = read_pairs_file(pairs_file, images_root, check_files=False)
    return _listed_set(listed, name or Path(pairs_file).stem, str(pairs_file), missing)


def write_bin(
    images_root: str | Path | None, pairs_file: str | Path, out: str | Path
) -> tuple[int, int]:
    """Package images + a pairs file as an InsightFace `.bin`; returns (pairs, images).

    The file is `pickle.dumps((bins, issame), protocol=2)`: for pair k, bins[2k] and
    bins[2k+1] are the encoded images (JPEG files are copied byte for byte; other
    formats are re-encoded as JPEG, quality 95). Written to a temporary sibling, then renamed;
    created with the mode any file gets under the umask (not mkstemp's 0600).
    """
    out = Path(out)
    listed = read_pairs_file(pairs_file, images_root)
    cache: dict[int, bytes] = {}

    def encoded(index: int) -> bytes:
        if index not in cache:
            file = listed.paths[index]
            data = file.read_bytes()
            if not data.startswith(b"\xff\xd8"):
                try:
                    data = encode_jpeg(decode_file(file))
                except DecodeError as exc:
                    raise UserError(f"{file}: cannot be decoded ({exc})") from None
            cache[index] = data
        return cache[index]

    bins: list[bytes] = []
    for a, b in listed.pairs.tolist():
        bins.extend((encoded(a), encoded(b)))
    issame = [bool(v) for v in listed.issame.tolist()]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda stream: pickle.dump((bins, issame), stream, protocol=2))
    return len(issame), len(cache)
