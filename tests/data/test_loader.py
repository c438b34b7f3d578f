"""The loader yields uint8 image batches and int64 labels, with 0 and 2 worker processes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eqmcli.data.image_folder import ImageFolderDataset, scan_image_folder
from eqmcli.data.loader import collate_uint8, default_num_workers, make_loader
from eqmcli.data.record import RecordDataset, RecordFile, RecordWriter, pack_payload, read_layout


@pytest.fixture(scope="module")
def record_dataset(tmp_path_factory: pytest.TempPathFactory) -> RecordDataset:
    """12 JPEG records of 3 classes, no header record."""
    root = tmp_path_factory.mktemp("rec")
    with RecordWriter(root / "train.rec") as writer:
        for key in range(12):
            buffer = io.BytesIO()
            Image.fromarray(np.full((10, 10, 3), key * 20, dtype=np.uint8)).save(buffer, "JPEG")
            writer.write(key, pack_payload(float(key % 3), buffer.getvalue(), id=key))
    rec = RecordFile(root / "train.rec")
    layout = read_layout(rec)
    rec.close()
    return RecordDataset(rec, layout.keys, layout.labels)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches(record_dataset: RecordDataset, workers: int) -> None:
    loader = make_loader(record_dataset, batch_size=5, num_workers=workers)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [5, 5, 2]
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 10, 10)
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 0, 1]
    assert abs(int(images[3].float().mean()) - 60) <= 2
    if workers:
        assert loader.persistent_workers
        assert sum(len(b[1]) for b in loader) == 12  # a second epoch on the same workers


def test_shuffle_drop_last_and_generator(record_dataset: RecordDataset) -> None:
    def order(seed: int) -> list[int]:
        loader = make_loader(
            record_dataset,
            batch_size=5,
            shuffle=True,
            drop_last=True,
            num_workers=0,
            generator=torch.Generator().manual_seed(seed),
        )
        return [int(x) for _, labels in loader for x in labels]

    in_file_order = [int(x) for _, labels in make_loader(record_dataset, batch_size=5,
                                                           num_workers=0) for x in labels]
    first = order(0)
    assert len(first) == 10  # drop_last: 12 images give two full batches of 5
    assert first == order(0)  # the generator fixes the order
    assert first != in_file_order[:10] and first != order(1)  # and the order is shuffled
    assert all(first.count(label) <= in_file_order.count(label) for label in set(first))


def test_defaults_and_collate(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_num_workers(1) == 0
    assert default_num_workers(2) == 1
    assert default_num_workers(64) == 8
    assert default_num_workers() >= 0
    images, labels = collate_uint8([(torch.zeros(3, 2, 2, dtype=torch.uint8), 4)] * 3)
    assert images.shape == (3, 3, 2, 2) and images.dtype == torch.uint8
    assert labels.tolist() == [4, 4, 4]


def test_image_folder_through_loader(tmp_path: Path) -> None:
    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for k in range(3):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"c{c}/{k}.jpg")
    _, files, labels = scan_image_folder(tmp_path)
    loader = make_loader(ImageFolderDataset(tmp_path, files, labels), batch_size=4, num_workers=2)
    images, got = next(iter(loader))
    assert images.shape == (4, 3, 8, 8) and got.tolist() == [0, 0, 0, 1]
