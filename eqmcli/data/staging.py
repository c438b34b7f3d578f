"""Output folders that appear whole or not at all (``eqm data convert``).

A conversion writes into ``<dst>.partial``, a sibling holding the marker file
`INCOMPLETE_MARKER`, and renames it to ``<dst>`` only after the last file is written. Ctrl-C
or an error removes the partial folder; a kill -9 or a power cut leaves it behind, marked,
and every reader of data sets refuses a marked folder (`refuse_incomplete`). The next
conversion to the same ``<dst>`` removes such a leftover: the marker proves it is ours, and
an exclusive lock on the marker tells a leftover from a conversion still running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from eqmcli.errors import UserError

INCOMPLETE_MARKER = ".eqm-incomplete"
PARTIAL_SUFFIX = ".partial"


def refuse_incomplete(folder: str | Path) -> None:
    """Raise `UserError` when ``folder`` is the unfinished output of an interrupted conversion."""
    folder = Path(folder)
    if (folder / INCOMPLETE_MARKER).exists():
        raise UserError(
            f"{folder} is the incomplete output of an interrupted 'eqm data convert'; "
            "delete it and convert again"
        )


@contextlib.contextmanager
def staged_output_dir(dst: str | Path) -> Iterator[Path]:
    """Yield a marked, locked ``<dst>.partial`` folder to write into; rename it to ``dst``
    when the block ends normally, remove it when the block raises (Ctrl-C included).

    ``dst`` must be absent or an empty folder (else `UserError`, before anything is written).
    """
    dst = Path(dst).expanduser()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UserError(f"output {dst} already exists and is not an empty folder")
    staging = dst.with_name(dst.name + PARTIAL_SUFFIX)
    _remove_leftover(staging)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot create {staging}: {exc.strerror or exc}") from None
    marker = staging / INCOMPLETE_MARKER
    lock = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.write(lock, f"incomplete output of eqm data convert -> {dst}\n".encode())
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        marker.unlink()  # from here on the folder is complete; the rename publishes it
        os.replace(staging, dst)
    finally:
        os.close(lock)


def _remove_leftover(staging: Path) -> None:
    """Delete the marked output of an interrupted conversion; refuse anything else there."""
    if not staging.exists():
        return
    marker = staging / INCOMPLETE_MARKER
    if not marker.is_file():
        raise UserError(f"{staging} exists and is not a leftover of 'eqm data convert'; move it")
    fd = os.open(marker, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"another 'eqm data convert' is writing {staging}") from None
    finally:
        os.close(fd)
    shutil.rmtree(staging)
