"""Image decoding: encoded JPEG/PNG bytes -> uint8 RGB tensor ``(3, H, W)``.

Decoding happens in DataLoader worker processes; only uint8 tensors cross the process
boundary (float conversion and normalization happen on the device, see
``eqmcli.data.transforms``). An image that cannot be decoded raises `DecodeError`, which
the datasets catch to count and list it (``bad_images.txt``) instead of crashing a run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from eqmcli.errors import UserError

ImageSize = int | tuple[int, int]  # a square side, or (height, width), in pixels
#: PIL modes of one 16-bit channel (PNG, TIFF); a 16-bit PGM decodes as "I" scaled to 0..65535
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class DecodeError(Exception):
    """Encoded bytes that are not a readable image (truncated, corrupt, unknown format)."""


def pixel_size(size: ImageSize | None) -> tuple[int, int] | None:
    """``s`` -> ``(s, s)``; ``(h, w)`` -> ``(h, w)`` as ints; None stays None."""
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. One 16-bit channel (0..65535) becomes round(v / 257) (PIL's own
    conversion would clip it at 255: a white image); PIL already reduces 16-bit RGB(A) and
    grey+alpha to 8 bits. 32-bit integer or float pixels, whose scale is unknown, are a
    `DecodeError`."""
    if img.mode in SIXTEEN_BIT_MODES or (img.mode == "I" and img.format == "PPM"):
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise DecodeError(
            f"{kind} pixels (PIL mode {img.mode}) have no known 8-bit scale; save the image "
            "with 8 or 16 bits per channel"
        )
    return img.convert("RGB")


def decode_image(data: bytes, image_size: ImageSize | None = None) -> torch.Tensor:
    """Decode JPEG/PNG (any format PIL reads) bytes into a uint8 ``(3, H, W)`` RGB tensor.

    ``image_size`` (pixels, a square side or ``(height, width)``): when given and different
    from the decoded size, the image is resized (bilinear, antialiased when shrinking) to
    it. Grayscale, palette and RGBA images are converted to RGB; 16 bits per channel are
    scaled to 8 (`_to_rgb`). Raises `DecodeError` for anything PIL cannot fully decode and
    for 32-bit integer or float pixels.
    """
    if not data:
        raise DecodeError("empty image payload")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # force a full decode: a truncated JPEG fails here, not later
            rgb = _to_rgb(img)
    except DecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise DecodeError("not a JPEG/PNG image (unknown format)") from None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise DecodeError(f"cannot decode image: {exc}") from None
    size = pixel_size(image_size)
    if size is not None and rgb.size != (size[1], size[0]):  # PIL sizes are (width, height)
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    # HWC -> CHW in numpy: a torch permute+contiguous here goes through the intra-op
    # thread pool and costs ~10 ms per 112 px image on a busy CPU (vs ~20 us).
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def decode_file(path: str | Path, image_size: ImageSize | None = None) -> torch.Tensor:
    """Read and decode an image file; unreadable or corrupt files raise `DecodeError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DecodeError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_image(data, image_size)


def encode_jpeg(image: torch.Tensor | np.ndarray, quality: int = 95) -> bytes:
    """Encode a uint8 RGB image, ``(3, H, W)`` tensor or ``(H, W, 3)`` array, as JPEG bytes."""
    if isinstance(image, torch.Tensor):
        image = image.permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buffer, format="JPEG", quality=quality
    )
    return buffer.getvalue()


class BadImageLog:
    """Counts and lists undecodable images/records; ``strict=True`` makes the first fatal.

    Worker-safe by construction: each process (the main one and every DataLoader worker)
    appends ``<name><TAB><reason>`` lines to ``path`` with one small ``O_APPEND`` write,
    which POSIX keeps atomic, so lines from concurrent workers never interleave. Each
    process lists a name at most once; the same image failing in two workers (or two
    epochs with different workers) may appear twice in the file, so `names` and `count`
    deduplicate. With ``path=None`` only the in-process set is kept.
    """

    def __init__(self, path: str | Path | None = None, strict: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.strict = strict
        self._seen: set[str] = set()

    def record(self, name: str, reason: str) -> None:
        """Note one failure; raises `UserError` naming ``name`` when strict."""
        if self.strict:
            raise UserError(f"corrupt image {name}: {reason} (strict mode)")
        if name in self._seen:
            return
        self._seen.add(name)
        if self.path is not None:
            line = f"{name}\t{' '.join(reason.split())}\n".encode()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def names(self) -> list[str]:
        """Every distinct failed name, in first-seen order (file first, then this process)."""
        listed = read_bad_images(self.path) if self.path is not None else []
        seen = dict.fromkeys(listed)
        seen.update(dict.fromkeys(sorted(self._seen)))
        return list(seen)

    @property
    def count(self) -> int:
        """How many distinct images failed so far (all processes, when a path is set)."""
        return len(self.names())


def read_bad_images(path: str | Path) -> list[str]:
    """The distinct names listed in a ``bad_images.txt`` (first tab-separated field)."""
    path = Path(path)
    if not path.is_file():
        return []
    names = (line.split("\t", 1)[0] for line in path.read_text().splitlines())
    return list(dict.fromkeys(name for name in names if name))


class ImageFiles(Dataset):
    """Image files decoded lazily: item i -> (uint8 ``(3, H, W)``, 0).

    An undecodable file raises a `UserError` naming it; with ``bad_log`` it is recorded
    there under its index instead (worker-safe) and stands in as a black image of
    ``placeholder_size`` (H, W), so one broken file never stops a loop over thousands (the
    caller drops those rows afterwards, `eqm embed`)."""

    def __init__(
        self, paths: Sequence[str | Path], *, bad_log: BadImageLog | None = None,
        placeholder_size: tuple[int, int] = (112, 112),
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.bad_log = bad_log
        self.placeholder_size = placeholder_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            return decode_file(self.paths[index]), 0
        except DecodeError as exc:
            if self.bad_log is None:
                raise UserError(f"{self.paths[index]}: cannot be decoded ({exc})") from None
            self.bad_log.record(str(index), str(exc))
            return torch.zeros((3, *self.placeholder_size), dtype=torch.uint8), 0
