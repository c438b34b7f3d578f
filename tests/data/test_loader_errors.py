"""A `UserError` raised inside a DataLoader worker reaches the user as the one sentence,
naming the class folder (not its index), without the worker's traceback text."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eqmcli.data.decode import BadImageLog
from eqmcli.data.image_folder import ImageFolderDataset, scan_image_folder
from eqmcli.data.loader import make_loader
from eqmcli.errors import UserError


def folder_with_broken_class(root: Path) -> Path:
    """alice: 4 good 24 px PNGs; bob: 4 files that are not images."""
    for name in ("alice", "bob"):
        (root / name).mkdir(parents=True)
    for k in range(4):
        Image.fromarray(np.full((24, 24, 3), k, np.uint8)).save(root / "alice" / f"{k}.png")
        (root / "bob" / f"{k}.png").write_bytes(b"not an image at all")
    return root


def loader_error(dataset: ImageFolderDataset, workers: int) -> str:
    with pytest.raises(UserError) as info:
        list(make_loader(dataset, batch_size=4, num_workers=workers))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and "worker" not in message
    return message


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_class_names_its_folder(tmp_path: Path, workers: int) -> None:
    root = folder_with_broken_class(tmp_path / "faces")
    _, files, labels = scan_image_folder(root)
    log = BadImageLog(tmp_path / "bad_images.txt")
    message = loader_error(ImageFolderDataset(root, files, labels, bad_log=log), workers)
    listed = tmp_path / "bad_images.txt"
    assert message == f"every image of class folder {root / 'bob'} is unreadable; see {listed}"


def test_strict_mode_error_in_a_worker_is_the_same_sentence(tmp_path: Path) -> None:
    root = folder_with_broken_class(tmp_path / "faces")
    _, files, labels = scan_image_folder(root)
    strict = ImageFolderDataset(root, files, labels, bad_log=BadImageLog(strict=True))
    message = loader_error(strict, 2)
    assert message.startswith(f"corrupt image {root / 'bob'}/")
    assert message.endswith("(strict mode)")


# A program that ends on the loader's error with the loader still alive (held by a global
# and by the traceback): its workers must end with it.
EXIT_ON_ERROR = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from eqmcli.data.image_folder import ImageFolderDataset, scan_image_folder
    from eqmcli.data.loader import make_loader

    root = Path(sys.argv[1])
    _, files, labels = scan_image_folder(root)
    keep = [i for i, f in enumerate(files) if sys.argv[2] == "fail" or f.startswith("alice")]
    LOADER = make_loader(ImageFolderDataset(root, [files[i] for i in keep], labels[keep]),
                         batch_size=2, num_workers=2)
    for batch in LOADER:
        pass
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["fail", "finish"])
def test_a_program_holding_a_loader_exits_promptly(tmp_path: Path, mode: str) -> None:
    root = folder_with_broken_class(tmp_path / "faces")
    process = subprocess.Popen(
        [sys.executable, "-c", EXIT_ON_ERROR, str(root), mode], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        out, err = process.communicate(timeout=60)  # hung forever when the workers outlived it
    finally:
        process.kill()
    if mode == "fail":
        assert process.returncode == 1 and "class folder" in err.splitlines()[-1]
    else:
        assert process.returncode == 0 and out.strip() == "finished"


def test_eqm_train_prints_the_sentence_and_exits_2(tmp_path: Path, train_on_folder) -> None:
    root = folder_with_broken_class(tmp_path / "faces")
    result = train_on_folder(root, tmp_path / "run")
    assert result.exit_code == 2
    assert "class folder" in result.output and "bob" in result.output
    assert "Traceback" not in result.output and "worker process" not in result.output
