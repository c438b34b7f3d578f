"""Whole-file writes that never leave a half-written file: a temporary sibling, renamed.

The temporary file is `.NAME.<random>.tmp` beside `NAME`, created with mode 0o666 so the
user's umask applies exactly as for any other file the run writes (`tempfile.mkstemp`
would make it 0o600). A failed write (disk full, quota, read-only file system) removes
the temporary file, leaves the previous `NAME` untouched and raises `StorageError` with
one sentence.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import Any, BinaryIO

import numpy as np

from eqmcli.errors import StorageError, UserError

TEMPORARY_SUFFIX = ".tmp"


def temporary_sibling(path: Path) -> Path:
    """A fresh `.NAME.<random>.tmp` path in the folder of `path`."""
    return path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}"


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files of `atomic_write` left in `folder` by a process that died mid-write."""
    if not folder.is_dir():
        return []
    return sorted(
        entry for entry in folder.iterdir()
        if entry.name.startswith(".") and entry.name.endswith(TEMPORARY_SUFFIX)
        and entry.is_file()
    )


def storage_error(path: Path, error: OSError) -> StorageError:
    """One sentence for a failed write of `path`: the reason, and that the old file is intact."""
    reason = error.strerror or (os.strerror(error.errno) if error.errno else str(error))
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"{reason.lower()} on the device holding {path.parent}"
    kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    return StorageError(f"could not write {path}: {reason}; {kept}")


def make_folder(folder: Path, what: str, advice: str = "") -> None:
    """Create `folder` and its missing parents; `UserError` naming `what` (then `advice`)
    when a file is in the way or the folder cannot be created."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{what} cannot be created: a file is in the way{advice}") from None
    except OSError as error:
        raise UserError(f"{what} cannot be created: {error.strerror or error}{advice}") from None


def check_output_file(
    path: Path, option: str, *, reads: Sequence[Path] = (), force: bool = False
) -> None:
    """Refuse, before any work, an output file whose writing would lose something or fail.

    Refused in one sentence naming `option`: a path that is one of `reads` (the command's
    inputs; `force` does not change that), a folder, an existing file unless `force`, and a
    folder where no file can be created (read-only, no permission: a temporary sibling is
    created and removed to find out). Missing folders on the way are created, once every
    other check has passed (`make_folder`).
    """
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; name the file to write")
    for source in reads:
        if path.resolve() == source.resolve() or (
            path.exists() and source.exists() and os.path.samefile(path, source)
        ):
            raise UserError(
                f"{option} {path} is {source}, which this command reads; choose another file"
            )
    if path.exists() and not force:
        raise UserError(f"{option} {path} exists; pass --force to replace it")
    make_folder(path.parent, f"the folder of {option} {path}")
    try:
        _create_and_remove(temporary_sibling(path))
    except OSError as error:
        raise storage_error(path, error) from None


def check_writable_folder(folder: Path, what: str, advice: str = "") -> None:
    """Create `folder` (and its parents) and make sure a file can be created in it, before
    any work; otherwise one `UserError`: `what` and `folder`, the reason, then `advice`."""
    make_folder(folder, f"{what} {folder}", advice)
    try:
        _create_and_remove(temporary_sibling(folder / "write-check"))
    except OSError as error:
        raise UserError(
            f"{what} {folder} cannot be written: {error.strerror or error}{advice}"
        ) from None


def _create_and_remove(probe: Path) -> None:
    """Create the empty file `probe` and remove it (`OSError` when the folder refuses)."""
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    probe.unlink()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, sync: bool = True) -> Path:
    """Call `write(stream)` on a temporary sibling of `path`, then rename it over `path`.

    `sync` flushes the data to the disk before the rename (checkpoints); a crash at any
    moment leaves either the old file or the new one, never a mixture.
    """
    path = Path(path)
    atomic_write_all([(path, write)], sync=sync)
    return path


def atomic_write_all(
    files: Sequence[tuple[Path, Callable[[BinaryIO], None]]], *, sync: bool = True
) -> None:
    """`atomic_write` for files that belong together (features and their paths): every
    file is written to its temporary sibling first and renamed only when all are written,
    so a failed write (disk full) leaves the old files and no new one."""
    temporaries = [(temporary_sibling(path), path) for path, _ in files]
    try:
        for (temporary, path), (_, write) in zip(temporaries, files, strict=True):
            try:
                handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                with os.fdopen(handle, "wb") as stream:
                    write(stream)
                    stream.flush()
                    if sync:
                        os.fsync(stream.fileno())
            except OSError as error:
                raise storage_error(path, error) from None
        for temporary, path in temporaries:
            try:
                os.replace(temporary, path)
            except OSError as error:
                raise storage_error(path, error) from None
    finally:
        for temporary, _ in temporaries:
            temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str, *, sync: bool = False) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary sibling."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda stream: stream.write(data), sync=sync)


def json_safe(value: Any) -> Any:
    """`value` as plain JSON data: numpy scalars as Python numbers, tuples as lists, paths
    as strings and non-finite floats as None (strict JSON has no NaN or Infinity)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """`json_safe(data)` as indented JSON at `path` (its folder created), written through a
    temporary sibling: every result file of the run directory is written here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(json_safe(data), indent=2) + "\n")
