"""`eqm embed`: image files in (a folder, one image or a list of paths), ``.npy`` out.

The images are read by `ImageFiles` (an unreadable image is listed, not fatal) and embedded
by `eqmcli.evaluation.features.extract_embeddings`; the features, their paths and the list
of unreadable files are written atomically beside ``--out``.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqmcli.atomic import atomic_write_all, make_folder, temporary_sibling
from eqmcli.data.decode import BadImageLog, ImageFiles
from eqmcli.data.image_folder import IMAGE_SUFFIXES
from eqmcli.devices import resolve_device
from eqmcli.errors import UserError, shown
from eqmcli.evaluation.features import extract_embeddings
from eqmcli.interop.models import assumed_preprocessing_note, load_model


def list_images(source: str | Path) -> list[Path]:
    """The images to embed: a folder (recursively, sorted; files with an image suffix, and
    symbolic links with one whatever they point to), one image file, or a text file of
    paths (one per line; relative paths are relative to the text file's folder; blank lines
    and ``#`` comments skipped)."""
    source = Path(source)
    if source.is_dir():  # a dangling or looping link is kept: reading it lists it as unreadable
        found = (p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return sorted(p for p in found if p.is_file() or p.is_symlink())
    if not source.is_file():
        raise UserError(f"input not found: {source}")
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return [source]
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{source} is neither an image nor a UTF-8 text file of paths") from None
    names = [line.strip() for line in lines]
    return [source.parent / name for name in names if name and not name.startswith("#")]


#: Unicode categories a path in FEATURES.paths.txt (UTF-8, one per line) may not contain:
#: control characters (newline, tab, ...), undecodable bytes (surrogates), line separators
UNLISTABLE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
SHOWN_NAMES = 5


def check_listable(paths: list[Path]) -> None:
    """`UserError` listing the paths that a one-path-per-line UTF-8 file cannot hold
    unambiguously (`UNLISTABLE_CATEGORIES`), so the rows and the paths always pair up."""
    bad = [
        path for path in paths
        if any(unicodedata.category(c) in UNLISTABLE_CATEGORIES for c in str(path))
    ]
    if bad:
        named = ", ".join(shown(str(path), 120) for path in bad[:SHOWN_NAMES])
        more = f" and {len(bad) - SHOWN_NAMES} more" if len(bad) > SHOWN_NAMES else ""
        raise UserError(
            f"{len(bad)} image path(s) hold a control character (newline, tab, ...) or bytes "
            f"that are not UTF-8, which the one-path-per-line .paths.txt cannot hold: {named}"
            f"{more}; rename them, or list the other images in a text file"
        )


@dataclass
class EmbedResult:
    """What `embed_images` wrote: ``count`` x ``dim`` float32 features and the two lists."""

    features: Path
    paths_file: Path
    unreadable_file: Path
    count: int
    dim: int
    unreadable: list[str]
    seconds: float
    normalized: bool
    flip: bool
    resized_from: tuple[int, int] | None
    input_size: tuple[int, int]
    note: str | None = None  # the preprocessing assumed for an ONNX model that records none

    @property
    def images_per_second(self) -> float:
        """Images read and embedded per second (the unreadable ones included)."""
        return (self.count + len(self.unreadable)) / max(self.seconds, 1e-9)


def output_lists(features: Path) -> tuple[Path, Path]:
    """``F.npy`` -> (``F.paths.txt``, ``F.unreadable.txt``): the files written beside it."""
    stem = features.with_suffix("")
    return Path(f"{stem}.paths.txt"), Path(f"{stem}.unreadable.txt")


def embed_images(
    model: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    flip: bool = False,
    raw: bool = False,
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = True,
    mean: str | None = None,
    std: str | None = None,
    bgr: bool | None = None,
) -> EmbedResult:
    """Embed the images of ``source`` (see `list_images`) with ``model`` (run directory,
    checkpoint or ``.onnx`` file) into ``out`` (``.npy``, float32 ``N x d``, L2-normalized
    unless ``raw``), with the paths in the same order in ``out``'s ``.paths.txt`` and the
    unreadable images (skipped) in its ``.unreadable.txt`` (``path<TAB>reason``). The three
    files are written to temporary siblings and renamed only when all are written
    (`atomic_write_all`: a full disk leaves none of them). ``mean``/``std``/``bgr`` set
    an ONNX model's preprocessing (`eqmcli.interop.models.load_model`)."""
    out = Path(out)
    if out.suffix != ".npy":
        raise UserError(f"--out {out} must end in .npy")
    paths = list_images(source)
    if not paths:
        raise UserError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    check_listable(paths)
    torch_device = resolve_device(device)
    loaded = load_model(model, torch_device, mean=mean, std=std, bgr=bgr)
    make_folder(out.parent, f"the folder of --out {out}")
    log_path = temporary_sibling(out.with_suffix(".unreadable"))
    started = time.perf_counter()
    try:
        dataset = ImageFiles(paths, bad_log=BadImageLog(log_path),
                             placeholder_size=loaded.input_size)
        emb = extract_embeddings(
            loaded.backbone, dataset, batch_size=batch_size, device=torch_device,
            input_size=loaded.input_size, flip=flip, progress=progress, normalize=not raw,
        )
        reasons = _reasons(log_path)
    finally:
        log_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    features = emb.flip if flip and emb.flip is not None else emb.plain
    keep = [i for i in range(len(paths)) if i not in reasons]
    array = features[keep].numpy().astype(np.float32, copy=False)
    unreadable = [str(paths[i]) for i in sorted(reasons)]
    paths_file, unreadable_file = output_lists(out)
    listed = "".join(f"{paths[i]}\n" for i in keep).encode("utf-8")
    skipped = "".join(f"{paths[i]}\t{reasons[i]}\n" for i in sorted(reasons)).encode("utf-8")
    atomic_write_all([  # the three files appear together or not at all (e.g. a full disk)
        (out, lambda stream: np.save(stream, array)),
        (paths_file, lambda stream: stream.write(listed)),
        (unreadable_file, lambda stream: stream.write(skipped)),
    ])
    return EmbedResult(
        features=out, paths_file=paths_file, unreadable_file=unreadable_file, count=len(keep),
        dim=int(array.shape[1]) if array.ndim == 2 else 0, unreadable=unreadable,
        seconds=seconds, normalized=not raw, flip=flip, resized_from=emb.resized_from,
        input_size=loaded.input_size, note=assumed_preprocessing_note(loaded),
    )


def _reasons(log_path: Path) -> dict[int, str]:
    """image index -> reason from the `BadImageLog` file of `ImageFiles` (first reason of
    each index)."""
    if not log_path.is_file():
        return {}
    reasons: dict[int, str] = {}
    for line in log_path.read_text().splitlines():
        index, _, reason = line.partition("\t")
        reasons.setdefault(int(index), reason)
    return reasons
