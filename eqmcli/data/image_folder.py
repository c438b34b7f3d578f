"""Image folders: ``root/<identity>/<image>`` (the CASIA-WebFace aligned layout).

Classes are the sub-folders sorted by name (label = position in that order); images in a
class are its files with an image extension, sorted by name. Items are ``(uint8 (3,H,W)
RGB tensor, int label)``; decoding happens in the DataLoader workers.

Corrupt images: an image that fails to decode is recorded in a `BadImageLog` (appended to
``bad_images.txt``, counted) and the item is *substituted* by the next decodable image of
the same class (cyclically, in file order). The substitute keeps the batch shape and the
label distribution intact and needs no coordination between worker processes; a long run
therefore never crashes on one bad JPEG. ``strict=True`` raises a `UserError` naming the
file instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from eqmcli.data.decode import BadImageLog, DecodeError, ImageSize, decode_file, pixel_size
from eqmcli.data.staging import refuse_incomplete
from eqmcli.data.trainset import TrainData
from eqmcli.errors import UserError, shown

if TYPE_CHECKING:
    from eqmcli.run.recipe import ImageFolderSource

Item = TypeVar("Item")
# every still-image format of PIL that face crops come in (PGM: e.g. grey AT&T/Yale crops):
# the one list of image file suffixes (training folders, `eqm embed`)
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff",
)


def refuse_undecodable_name(path: Path) -> None:
    """`UserError` when the name of ``path`` has bytes that are not UTF-8 (class and image
    names are recorded as UTF-8 text: ``bad_images.txt``, analyses)."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(
            f"{shown(str(path), 160)} does not have a UTF-8 name (each \\udcXX is a byte that "
            "is not UTF-8); eqm records class and image names as text: rename it"
        ) from None


def scan_image_folder(root: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """List ``root/<identity>/<image>``: (class names, relative image paths, int64 labels).

    Classes sorted by folder name, files sorted by name within a class. Raises `UserError`
    for a missing root, a root with no class folders, a class folder without images, or a
    class or image name that is not UTF-8.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    refuse_incomplete(root)
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    if not class_dirs:
        raise UserError(f"image folder {root} has no class sub-folders (expected root/<id>/<img>)")
    classes: list[str] = []
    files: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        names = sorted(
            p.name
            for p in class_dir.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        for path in (class_dir, *(class_dir / name for name in names)):
            refuse_undecodable_name(path)
        if not names:
            raise UserError(
                f"class folder {class_dir} contains no images (looked for "
                f"{', '.join(IMAGE_SUFFIXES)})"
            )
        classes.append(class_dir.name)
        files.extend(f"{class_dir.name}/{name}" for name in names)
        labels.extend([label] * len(names))
    return classes, files, np.asarray(labels, dtype=np.int64)


def split_holdout(
    labels: np.ndarray, num_classes: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class held-out split: (train indices, test indices), both sorted, int64.

    Each class of n images holds out ``floor(fraction * n)`` of them, capped at ``n - 1``
    so every class keeps at least one training image; which ones is a permutation drawn
    from ``numpy.random.default_rng(seed)``, class by class in label order (deterministic).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if fraction <= 0.0:
        return np.arange(len(labels), dtype=np.int64), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    test: list[np.ndarray] = []
    for c in range(num_classes):
        members = order[bounds[c] : bounds[c + 1]]
        n_test = min(int(fraction * len(members)), max(len(members) - 1, 0))
        if n_test > 0:
            test.append(members[rng.permutation(len(members))[:n_test]])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    keep = np.ones(len(labels), dtype=bool)
    keep[test_idx] = False
    return np.flatnonzero(keep).astype(np.int64), test_idx.astype(np.int64)


class SubstitutingDataset(Dataset):
    """Base for file-backed face datasets: decode item i, or substitute a same-class item.

    Subclasses implement `_load(i) -> uint8 tensor` (raising `DecodeError`) and `_name(i)`
    (the file or record named in ``bad_images.txt``). ``labels`` are int64, one per item.
    """

    def __init__(self, labels: np.ndarray, bad_log: BadImageLog | None = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.bad_log = bad_log if bad_log is not None else BadImageLog()
        self._class_members: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def _name(self, index: int) -> str:
        raise NotImplementedError

    def _class_name(self, label: int) -> str:
        """How messages name class ``label`` (its folder, or its number in a record file)."""
        raise NotImplementedError

    def _members(self, label: int) -> np.ndarray:
        if self._class_members is None:
            order = np.argsort(self.labels, kind="stable")
            uniq, starts = np.unique(self.labels[order], return_index=True)
            ends = [*starts[1:], len(order)]
            self._class_members = {
                int(c): order[s:e] for c, s, e in zip(uniq, starts, ends, strict=True)
            }
        return self._class_members[label]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.labels[index])
        try:
            return self._load(index), label
        except DecodeError as exc:
            self.bad_log.record(self._name(index), str(exc))
        members = self._members(label)
        start = int(np.searchsorted(members, index)) if members.size else 0
        for step in range(1, len(members)):
            other = int(members[(start + step) % len(members)])
            try:
                return self._load(other), label
            except DecodeError as exc:
                self.bad_log.record(self._name(other), str(exc))
        listed = f"; see {self.bad_log.path}" if self.bad_log.path is not None else ""
        raise UserError(f"every image of {self._class_name(label)} is unreadable{listed}")


class ImageFolderDataset(SubstitutingDataset):
    """Items of an image folder: ``root/files[i]`` decoded to uint8 ``(3,H,W)``, ``labels[i]``.

    ``image_size`` (pixels, a square side or ``(height, width)``): every image whose size
    differs is resized to it, so a folder of mixed sizes batches; None keeps each size.
    """

    def __init__(
        self,
        root: str | Path,
        files: Sequence[str],
        labels: np.ndarray,
        *,
        image_size: ImageSize | None = None,
        bad_log: BadImageLog | None = None,
    ) -> None:
        super().__init__(labels, bad_log)
        self.root = Path(root)
        # fixed-width UTF-8 bytes, not Python strings: compact and not copied into each
        # worker by reference-count writes (copy-on-write stays shared after fork)
        self.files = np.asarray([f.encode() for f in files], dtype=np.bytes_)
        self.image_size = pixel_size(image_size)

    def _path(self, index: int) -> Path:
        return self.root / self.files[index].decode()

    def _name(self, index: int) -> str:
        return str(self._path(index))

    def _class_name(self, label: int) -> str:
        members = self._members(label)
        return f"class folder {self._path(int(members[0])).parent}" if members.size else "?"

    def _load(self, index: int) -> torch.Tensor:
        return decode_file(self._path(index), self.image_size)


def probe_image_size(
    items: Sequence[Item], load: Callable[[Item], torch.Tensor], source: str
) -> tuple[int, int]:
    """(H, W) of the first of ``items`` that ``load`` decodes; `UserError` naming ``source``
    when none does."""
    for item in items:
        try:
            image = load(item)
        except DecodeError:
            continue
        return int(image.shape[1]), int(image.shape[2])
    raise UserError(f"none of the first {len(items)} images of {source} decodes")


def build_image_folder_data(
    source: ImageFolderSource,
    strict: bool = False,
    bad_images_path: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
) -> TrainData:
    """Scan ``source.root`` into a `TrainData` (train split + optional held-out test split).

    ``class_sizes`` counts training images per class (after the hold-out). Every image is
    resized in the loader's workers to ``image_size``: ``source.image_size``, else
    ``input_size`` (the model input the recipe asks for), else the first readable image's.
    """
    root = Path(source.root).expanduser()
    classes, files, labels = scan_image_folder(root)
    num_classes = len(classes)
    train_idx, test_idx = split_holdout(labels, num_classes, source.holdout_fraction, source.seed)
    bad_log = BadImageLog(bad_images_path, strict=strict)
    size = pixel_size(source.image_size) or pixel_size(input_size)
    if size is None:
        size = probe_image_size([root / f for f in files[:16]], decode_file, str(root))

    def subset(idx: np.ndarray) -> ImageFolderDataset:
        return ImageFolderDataset(
            root, [files[i] for i in idx], labels[idx], image_size=size, bad_log=bad_log
        )

    return TrainData(
        dataset=subset(train_idx),
        num_classes=num_classes,
        image_size=size,
        class_sizes=np.bincount(labels[train_idx], minlength=num_classes).astype(np.int64),
        test_dataset=subset(test_idx) if len(test_idx) else None,
        class_names=classes,
    )
