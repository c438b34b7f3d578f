"""`eqm data convert` killed or interrupted mid-way leaves nothing that looks complete.

The converting process is a real `eqm` run in a subprocess; a small patch makes it stop at
a known write (SIGKILL itself, or wait there for the test's SIGINT), so the interruption
always lands in the middle of the data set.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from record_files import face_dataset, hand_file
from typer.testing import Result

from eqmcli.data.staging import INCOMPLETE_MARKER, staged_output_dir
from eqmcli.errors import UserError

# Runs `eqm data convert SRC DST` with the N-th call of TARGET ('write' = RecordWriter.write,
# 'write_bytes' = Path.write_bytes) replaced by ACTION ('kill' = SIGKILL, 'wait' = sleep).
CONVERT = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from eqmcli.data import record
    from eqmcli.cli import app

    target, nth, action = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    owner = record.RecordWriter if target == "write" else Path
    real = getattr(owner, target)
    calls = 0

    def stopping(self, *args, **kwargs):
        global calls
        calls += 1
        if calls == nth:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            print("stopped", flush=True)
            time.sleep(60)
        return real(self, *args, **kwargs)

    setattr(owner, target, stopping)
    app(["data", "convert", *sys.argv[4:]])
    """
)


def make_folder(root: Path, classes: int = 6, per_class: int = 3) -> Path:
    for c in range(classes):
        (root / f"id{c}").mkdir(parents=True)
        for k in range(per_class):
            pixels = np.full((8, 8, 3), 10 * c + k, dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"id{c}" / f"{k}.png")
    return root


def convert_stopping(target: str, nth: int, action: str, src: Path, dst: Path):
    args = [sys.executable, "-c", CONVERT, target, str(nth), action, str(src), str(dst)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def assert_nothing_looks_complete(eqm: Callable[..., Result], dst: Path) -> None:
    assert not dst.exists()
    stats = eqm("data", "stats", str(dst))
    assert stats.exit_code == 2 and "Traceback" not in stats.output


@pytest.mark.parametrize("direction", ["folder->record", "record->folder"])
def test_kill_9_mid_convert_leaves_only_a_marked_partial_that_readers_refuse(
    tmp_path: Path, direction: str, eqm
) -> None:
    folder = make_folder(tmp_path / "faces")
    if direction == "folder->record":
        src, dst, target = folder, tmp_path / "rec", "write"
    else:
        first = eqm("data", "convert", str(folder), str(tmp_path / "rec"))
        assert first.exit_code == 0, first.output
        src, dst, target = tmp_path / "rec", tmp_path / "back", "write_bytes"
    process = convert_stopping(target, 9, "kill", src, dst)
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL

    assert_nothing_looks_complete(eqm, dst)
    partial = dst.with_name(dst.name + ".partial")
    assert (partial / INCOMPLETE_MARKER).is_file()
    refused = eqm("data", "stats", str(partial))
    assert refused.exit_code == 2 and "incomplete output" in refused.output

    again = eqm("data", "convert", str(src), str(dst))  # removes the leftover
    assert again.exit_code == 0, again.output
    assert not partial.exists()
    stats = eqm("data", "stats", str(dst), "--json")
    assert stats.exit_code == 0 and '"images": 18' in stats.output


def test_ctrl_c_mid_convert_leaves_nothing(tmp_path: Path, eqm) -> None:
    folder = make_folder(tmp_path / "faces")
    dst = tmp_path / "rec"
    process = convert_stopping("write", 9, "wait", folder, dst)
    assert process.stdout.readline().strip() == "stopped"
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert_nothing_looks_complete(eqm, dst)
    assert not dst.with_name("rec.partial").exists()


def test_a_corrupt_record_mid_convert_leaves_nothing(tmp_path: Path, eqm) -> None:
    records, _ = face_dataset(tmp_path)
    hand_file(tmp_path, records)
    lines = (tmp_path / "train.idx").read_text().splitlines()
    lines[3] = "3\t2"  # image key 3 of 5 points into the middle of a record
    (tmp_path / "train.idx").write_text("\n".join(lines) + "\n")
    result = eqm("data", "convert", str(tmp_path), str(tmp_path / "back"))
    assert result.exit_code == 2 and "record 3 is corrupt" in result.output
    assert not (tmp_path / "back").exists() and not (tmp_path / "back.partial").exists()


def test_a_conversion_in_progress_is_not_removed_by_another(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    partial = tmp_path / "out.partial"
    partial.mkdir()
    marker = partial / INCOMPLETE_MARKER
    marker.write_text("busy\n")
    with open(marker) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another 'eqm data convert'"), staged_output_dir(dst):
            pass
    assert marker.is_file()
    (partial / INCOMPLETE_MARKER).unlink()
    with pytest.raises(UserError, match="not a leftover"), staged_output_dir(dst):
        pass
