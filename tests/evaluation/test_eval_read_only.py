"""`eqm eval` on a run folder it cannot write: one sentence before any embedding work."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest


@pytest.mark.parametrize("eval_folder_exists", [True, False])
def test_eval_of_a_read_only_run_folder_is_one_sentence_before_any_work(
    tmp_path: Path, tiny_run_copy: Path, monkeypatch: pytest.MonkeyPatch,
    eval_folder_exists: bool, eqm
) -> None:
    run = tiny_run_copy
    shutil.rmtree(run / "eval")  # the results of training's verification
    if eval_folder_exists:
        (run / "eval").mkdir()
    real_open, real_mkdir = os.open, Path.mkdir
    read_only = str(run / "eval")

    def refuse(path: object) -> None:
        if str(path).startswith(read_only):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def guarded_open(path, *args, **kwargs):
        refuse(path)
        return real_open(path, *args, **kwargs)

    def guarded_mkdir(self, *args, **kwargs):
        if not self.exists():
            refuse(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(Path, "mkdir", guarded_mkdir)
    result = eqm("eval", run, "--device", "cpu")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Read-only file system" in said and "--out DIR" in said, said
    assert "Traceback" not in result.output and "accuracy" not in said, "refused before the work"
    monkeypatch.undo()
    result = eqm("eval", run, "--device", "cpu", "--out", tmp_path / "elsewhere")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "synthetic.json").is_file()
