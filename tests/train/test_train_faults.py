"""Signals, crashes, disks and broken checkpoints during `eqm train` (issue 10, items 6-18)."""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import Result

import eqmcli.atomic
from eqmcli.errors import TrainingStopped, UserError
from eqmcli.run.checkpoint import load_checkpoint, save_checkpoint
from eqmcli.run.recipe import load_recipe
from eqmcli.run.rundir import load_trained
from eqmcli.train import train

QUICK = ["--set", "eval.every_epochs=0", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def one_epoch(recipe: Path, out: Path) -> dict:
    """Train one epoch without evaluation; return its last checkpoint."""
    train(load_recipe(recipe, ["train.epochs=1", "eval.every_epochs=0"]), out, progress=False)
    return load_checkpoint(out / "checkpoints" / "last.pt")


def flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- signals
def test_sigterm_to_the_job_checkpoints_and_the_printed_command_resumes(tiny_recipe_path,
                                                                          tmp_path, eqm):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "eqmcli", "train", str(tiny_recipe_path), "--out", str(out),
               "--no-progress", "--set", "train.epochs=4", "--set", "eval.every_epochs=0",
               "--set", "data.num_workers=1"]
    # a session of its own: SIGTERM goes to the whole process group (trainer + loader
    # worker), as Slurm and Kubernetes send it
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                               start_new_session=True)
    deadline = time.time() + 120
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr_bytes = process.communicate(timeout=120)
    stderr = stderr_bytes.decode()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    stopped = load_checkpoint(out / "checkpoints" / "last.pt")
    assert 0 < stopped["step"] < 4 * 8, "saved where it stopped, not at the end"
    printed = stderr.split("Resume with:", 1)[1].strip().splitlines()[0]
    words = shlex.split(printed)
    assert words[:2] == ["eqm", "train"]
    resumed = eqm(*words[1:])  # the CLI in this process: no second torch start
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 4


# ------------------------------------------------------------------ crashes and disks
def test_cut_off_last_metrics_line_does_not_block_resume(tiny_recipe_path, tmp_path, eqm):
    out = tmp_path / "run"
    one_epoch(tiny_recipe_path, out)
    with (out / "metrics.jsonl").open("a") as stream:
        stream.write('{"kind": "step", "epoch": 2, "st')  # power lost mid-line
    result = eqm("train", str(tiny_recipe_path), "--out", str(out), "--resume",
                 "--set", "train.epochs=2", *QUICK)
    assert result.exit_code == 0, result.output
    assert "dropped 1 unreadable line" in flat(result.output)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_disk_full_while_checkpointing_is_one_sentence_and_keeps_the_last_one(
    tiny_recipe_path, tmp_path, monkeypatch, eqm
):
    out = tmp_path / "run"
    good = one_epoch(tiny_recipe_path, out)

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(eqmcli.atomic.os, "fsync", full_disk)
    result = eqm("train", str(tiny_recipe_path), "--out", str(out), "--resume",
                 "--set", "train.epochs=2", *QUICK)
    assert result.exit_code == 2, result.output
    said = flat(result.output)
    assert "no space left on device" in said and "the previous last.pt is intact" in said
    assert "Traceback" not in result.output
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == good["step"]
    assert not list((out / "checkpoints").glob("*.tmp")), "the partial file is removed"


@pytest.mark.parametrize("failure", ["no space", "torch's message only"])
def test_disk_full_inside_torch_save_is_one_sentence_and_keeps_the_last_one(
    tiny_recipe_path, tmp_path, monkeypatch, full_disk, failure, eqm
):
    """The disk fills while torch's zip writer writes the checkpoint (it raises
    "[enforce fail at inline_container.cc ...] unexpected pos ...", a RuntimeError, which
    used to end `eqm train --resume` in a 90-line traceback)."""
    import torch

    out = tmp_path / "run"
    good = one_epoch(tiny_recipe_path, out)
    if failure == "no space":  # the real writer meets the full disk 4 KiB into the file
        full_disk(room=4096)
        expected = "no space left on device on the device holding"
    else:  # torch's RuntimeError with no OSError behind it

        def failing_save(obj, stream, *args, **kwargs):
            stream.write(b"PK\x03\x04 the first bytes of a zip file")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 "
                               "vs 598")

        monkeypatch.setattr(torch, "save", failing_save)
        expected = "the write failed (torch: [enforce fail at inline_container.cc:672]"
    result = eqm("train", str(tiny_recipe_path), "--out", str(out), "--resume",
                 "--set", "train.epochs=2", *QUICK)
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    said = flat(result.output)
    assert expected in said and "the previous last.pt is intact" in said, said
    assert "Traceback" not in result.output and result.stderr.count("Error:") == 1
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == good["step"]
    assert not list((out / "checkpoints").glob("*.tmp")), "the partial file is removed"


def test_stale_temporary_checkpoints_are_removed_at_the_next_start(tiny_recipe_path, tmp_path, eqm):
    out = tmp_path / "run"
    one_epoch(tiny_recipe_path, out)
    stale = out / "checkpoints" / ".last.pt.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint from a kill -9")
    result = eqm("train", str(tiny_recipe_path), "--out", str(out), "--resume",
                 "--set", "train.epochs=2", *QUICK)
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert "removed 1 temporary file" in flat(result.output)


def test_divergence_in_the_first_epoch_does_not_claim_a_good_checkpoint(
    tiny_recipe_path, tmp_path, monkeypatch
):
    from eqmcli.losses import EqMHead

    healthy_forward = EqMHead.forward
    monkeypatch.setattr(EqMHead, "forward",
                        lambda self, x, y: healthy_forward(self, x, y) * float("nan"))
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped) as stopped:
        train(load_recipe(tiny_recipe_path, ["eval.every_epochs=0"]), out, progress=False)
    message = str(stopped.value)
    assert "before any checkpoint was written" in message and "still holds" not in message
    assert not (out / "checkpoints" / "last.pt").exists()


def test_checkpoint_permissions_follow_the_umask(tiny_recipe_path, tmp_path):
    previous = os.umask(0o027)
    try:
        out = tmp_path / "run"
        one_epoch(tiny_recipe_path, out)
    finally:
        os.umask(previous)
    mode = (out / "checkpoints" / "last.pt").stat().st_mode & 0o777
    assert mode == 0o640 == (out / "recipe.yaml").stat().st_mode & 0o777


# ---------------------------------------------------------------- broken checkpoints
def test_checkpoint_whose_recipe_disagrees_with_its_weights_is_one_sentence(tiny_recipe_path,
                                                                            tmp_path):
    state = one_epoch(tiny_recipe_path, tmp_path / "run")
    recipe = yaml.safe_load(state["recipe"])
    recipe["model"]["embedding_dim"] = 8
    save_checkpoint({**state, "recipe": yaml.safe_dump(recipe)}, tmp_path / "lying.pt")
    with pytest.raises(UserError, match="disagrees with its backbone weights") as error:
        load_trained(tmp_path / "lying.pt")
    assert "embedding_dim 8" in str(error.value) and "\n" not in str(error.value)
    recipe["model"] = {**recipe["model"], "embedding_dim": 16, "backbone": "mobilefacenet"}
    save_checkpoint({**state, "recipe": yaml.safe_dump(recipe)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="disagrees with its backbone weights"):
        load_trained(tmp_path / "other.pt")


def test_checkpoint_with_weights_that_are_not_finite_is_one_sentence(tiny_recipe_path,
                                                                       tmp_path, eqm):
    """`eqm embed` used to write NaN rows (exit 0) from such a checkpoint."""
    state = one_epoch(tiny_recipe_path, tmp_path / "run")
    name = next(k for k, v in state["backbone"].items() if v.is_floating_point())
    state["backbone"][name][(0,) * state["backbone"][name].ndim] = float("inf")
    save_checkpoint(state, tmp_path / "inf.pt")
    (tmp_path / "faces").mkdir()
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path / "faces" / "a.png")
    result = eqm("embed", str(tmp_path / "inf.pt"), str(tmp_path / "faces"),
                 "--out", str(tmp_path / "f.npy"), "--device", "cpu")
    said = flat(result.output)
    assert result.exit_code == 2, said
    assert f"tensor 'backbone.{name}' holds 1 NaN or infinite value(s)" in said
    assert not (tmp_path / "f.npy").exists()


@pytest.mark.parametrize("field", ["input_size", "recipe", "optimizer"])
def test_checkpoint_lacking_a_field_is_one_sentence(tiny_recipe_path, tmp_path, field):
    out = tmp_path / "run"
    state = one_epoch(tiny_recipe_path, out)
    del state[field]
    save_checkpoint(state, out / "checkpoints" / "last.pt")
    with pytest.raises(UserError, match=field):
        if field == "optimizer":
            train(load_recipe(tiny_recipe_path, ["eval.every_epochs=0"]), out, resume=True,
                  progress=False)
        else:
            load_trained(out)


class Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_needs_code_execution_is_refused_in_plain_words(tiny_recipe_path,
                                                                         tmp_path, eqm):
    """A checkpoint, an init_from source and an imported .pth holding an object besides
    tensors: torch's advice used to be cut at 200 characters mid-sentence."""
    import torch

    marker = tmp_path / "payload_ran"
    torch.save({"backbone": {"w": torch.zeros(2)}, "extra": Payload(marker)}, tmp_path / "x.pt")
    commands = [
        ["eval", str(tmp_path / "x.pt"), "--device", "cpu"],
        ["train", str(tiny_recipe_path), "--out", str(tmp_path / "run"),
         "--set", f"model.init_from={tmp_path / 'x.pt'}", *QUICK],
        ["import", "insightface", str(tmp_path / "x.pt"), "--arch", "r18",
         "--out", str(tmp_path / "imported")],
    ]
    for command in commands:
        result = eqm(*command)
        said = flat(result.output)
        assert result.exit_code == 2, said
        assert "holds Python objects besides tensors (it asks for io.open)" in said, said
        assert "would need code execution and is refused" in said and said.endswith("trust")
    assert not marker.exists(), "the payload never ran"


# -------------------------------------------------------------------- output paths
def image_folder_recipe(tmp_path: Path, root: str) -> Path:
    """An image-folder recipe (2 identities x 6 images of 24 px) reading `root`."""
    for c in range(2):
        folder = tmp_path / "faces" / f"id{c}"
        folder.mkdir(parents=True)
        for k in range(6):
            pixels = np.full((24, 24, 3), 40 * c + 5 * k, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.png")
    recipe = {
        "name": "folder", "data": {"train": {"kind": "image-folder", "root": root},
                                   "num_workers": 0},
        "model": {"backbone": "tiny", "embedding_dim": 8},
        "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
        "eval": {"every_epochs": 0},
    }
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def refused(eqm: Callable[..., Result], recipe: Path, out: Path | str) -> str:
    result = eqm("train", str(recipe), "--out", str(out), *QUICK)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return flat(result.output)


def test_out_inside_the_training_data_is_refused_before_anything_is_created(tmp_path, eqm):
    recipe = image_folder_recipe(tmp_path, str(tmp_path / "faces"))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "faces").rglob("*"))
    assert "inside the training data" in refused(eqm, recipe, tmp_path / "faces" / "runs" / "x")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "faces").rglob("*")) == before


def test_out_below_a_file_or_too_long_is_refused(tiny_recipe_path, tmp_path, eqm):
    (tmp_path / "afile").write_text("x")
    assert "a file is in the way" in refused(eqm, tiny_recipe_path, tmp_path / "afile" / "run")
    long = tmp_path / "deep" / ("n" * 300)
    assert "too long" in refused(eqm, tiny_recipe_path, long)
    assert not (tmp_path / "deep").exists(), "no parent folder was created"


def test_out_on_a_read_only_place_is_one_sentence(tiny_recipe_path, tmp_path, monkeypatch, eqm):
    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert "Read-only file system" in refused(eqm, tiny_recipe_path, tmp_path / "ro" / "run")
    monkeypatch.undo()
    if os.geteuid() != 0:  # root may write anywhere: the chmod below binds others only
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert "Permission denied" in refused(eqm, tiny_recipe_path, locked / "run")


def test_relative_data_root_is_recorded_as_absolute(tmp_path, monkeypatch, eqm):
    monkeypatch.chdir(tmp_path)
    recipe = image_folder_recipe(tmp_path, "faces")
    out = tmp_path / "run"
    result = eqm("train", str(recipe), "--out", str(out), *QUICK)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "recipe.yaml").read_text())["data"]["train"]["root"]
    assert saved == str(tmp_path / "faces")
    stored = yaml.safe_load(load_checkpoint(out / "checkpoints" / "last.pt")["recipe"])
    assert stored["data"]["train"]["root"] == saved
    again = eqm("train", str(recipe), "--out", str(out), "--resume",
                "--set", "train.epochs=2", *QUICK)
    assert again.exit_code == 0, again.output


def test_a_class_folder_name_that_is_not_utf8_is_one_sentence_and_leaves_nothing(tmp_path, eqm):
    recipe = image_folder_recipe(tmp_path, str(tmp_path / "faces"))
    os.rename(tmp_path / "faces" / "id1", os.fsencode(tmp_path / "faces") + b"/id\xff1")
    said = refused(eqm, recipe, tmp_path / "new" / "run")
    assert "id\\udcff1" in said and "does not have a UTF-8 name" in said, said
    assert not (tmp_path / "new").exists(), "the folders the refused run made are removed"


def test_a_refused_train_leaves_no_empty_run_folder_but_keeps_an_existing_one(
    tiny_recipe_path, tmp_path, monkeypatch, eqm
):
    result = eqm("train", str(tiny_recipe_path), "--out",
                 str(tmp_path / "a" / "b"), "--resume", *QUICK)
    assert result.exit_code == 2 and "cannot resume" in flat(result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"], "a/ and a/b/ removed"
    result = eqm("train", str(tiny_recipe_path), "--out", str(tmp_path / "new"),
                 "--set", f"model.init_from={tmp_path / 'gone.pt'}", *QUICK)
    assert result.exit_code == 2 and "gone.pt" in flat(result.output), result.output
    assert not (tmp_path / "new").exists(), "refused in set-up: the new folder is removed"
    (tmp_path / "mine").mkdir()
    result = eqm("train", str(tiny_recipe_path), "--out", str(tmp_path / "mine"),
                 "--set", f"model.init_from={tmp_path / 'gone.pt'}", *QUICK)
    assert result.exit_code == 2 and "gone.pt" in flat(result.output), result.output
    assert (tmp_path / "mine").is_dir(), "a folder that existed before is kept"
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)  # a relative --out below an empty folder that existed
    result = eqm("train", str(tiny_recipe_path), "--out", "empty/new",
                 "--resume", *QUICK)
    assert result.exit_code == 2 and "cannot resume" in flat(result.output)
    assert (tmp_path / "empty").is_dir() and not (tmp_path / "empty" / "new").exists()


def test_a_run_killed_before_its_first_checkpoint_is_restarted_with_force(
    tiny_recipe_path, tmp_path, eqm
):
    """What kill -9 in the first epoch leaves (marker, recipe.yaml, metrics.jsonl, no
    checkpoint): --resume and a plain re-run both name --force, which then starts over."""
    import shutil

    out = tmp_path / "run"
    one_epoch(tiny_recipe_path, out)
    shutil.rmtree(out / "checkpoints")
    for flags in (["--resume"], []):
        said = flat(eqm("train", str(tiny_recipe_path), "--out", str(out),
                        *flags, *QUICK).output)
        assert "stopped before its first checkpoint" in said and "pass --force" in said, said
    result = eqm("train", str(tiny_recipe_path), "--out", str(out), "--force",
                 "--set", "train.epochs=1", *QUICK)
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "last.pt").is_file()
