"""Real folders: mixed and non-square image sizes are resized in the workers to one size
(`data.train.image_size`, else the model input, else the first image's), 112x96 SphereFace
crops feed sphere20, PGM files count as images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from record_files import png

from eqmcli.backbones import build_backbone
from eqmcli.data import build_train_data
from eqmcli.data.decode import decode_file
from eqmcli.data.image_folder import IMAGE_SUFFIXES, scan_image_folder
from eqmcli.data.loader import make_loader
from eqmcli.data.record import RecordFile, RecordWriter, build_record_data, pack_payload
from eqmcli.data.transforms import to_model_input
from eqmcli.errors import UserError
from eqmcli.run.recipe import ImageFolderSource, Recipe, RecordSource, load_recipe
from eqmcli.train.setup import resolve_input_size


def folder_of_sizes(root: Path, sizes: list[list[tuple[int, int]]], suffix: str = ".png") -> Path:
    """root/c<i>/<k><suffix>: class i holds one image per (height, width) in ``sizes[i]``."""
    for c, shapes in enumerate(sizes):
        (root / f"c{c}").mkdir(parents=True)
        for k, (height, width) in enumerate(shapes):
            pixels = np.full((height, width, 3), 40 * c + k, dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{k}{suffix}")
    return root


MIXED = [[(16, 16), (20, 12), (9, 15)], [(30, 30), (16, 16), (17, 11)]]


@pytest.mark.parametrize("workers", [0, 2])
def test_mixed_sizes_batch_at_the_first_image_size(tmp_path: Path, workers: int) -> None:
    data = build_train_data(ImageFolderSource(root=folder_of_sizes(tmp_path / "f", MIXED)))
    assert data.image_size == (16, 16)
    batches = list(make_loader(data.dataset, batch_size=3, num_workers=workers))
    assert [tuple(images.shape) for images, _ in batches] == [(3, 3, 16, 16)] * 2


def test_model_input_size_decides_when_the_source_gives_none(tmp_path: Path) -> None:
    source = ImageFolderSource(root=folder_of_sizes(tmp_path / "f", MIXED))
    data = build_train_data(source, input_size=(12, 10))
    assert data.image_size == (12, 10)
    assert {tuple(data.dataset[i][0].shape) for i in range(6)} == {(3, 12, 10)}
    own = build_train_data(source.model_copy(update={"image_size": 8}), input_size=(12, 10))
    assert own.image_size == (8, 8)


def test_recipe_image_size_accepts_height_width(tmp_path: Path) -> None:
    folder = folder_of_sizes(tmp_path / "f", MIXED)
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(
        {"data": {"train": {"kind": "image-folder", "root": str(folder), "image_size": [14, 10]}}}
    ))
    recipe = load_recipe(recipe_path)
    assert recipe.data.train.image_size == (14, 10)
    recipe_path.write_text(recipe.to_yaml())
    assert load_recipe(recipe_path) == recipe
    data = build_train_data(recipe.data.train)
    assert data.image_size == (14, 10) and data.dataset[0][0].shape == (3, 14, 10)
    with pytest.raises(UserError, match="data.train.image_size"):
        load_recipe(recipe_path, ["data.train.image_size=[14, 10, 3]"])


def test_sphereface_112x96_crops_train_sphere20(tmp_path: Path) -> None:
    folder = folder_of_sizes(tmp_path / "f", [[(112, 96)] * 2, [(112, 96)] * 2])
    data = build_train_data(ImageFolderSource(root=folder))
    assert data.image_size == (112, 96)
    net = build_backbone("sphere20", embedding_dim=8, input_size=data.image_size).eval()
    images, _ = next(iter(make_loader(data.dataset, batch_size=2, num_workers=0)))
    with torch.no_grad():
        assert net(to_model_input(images, "cpu")).shape == (2, 8)


def test_record_images_of_another_size_are_resized_to_property(tmp_path: Path) -> None:
    with RecordWriter(tmp_path / "train.rec") as writer:
        for key, side in enumerate([8, 10, 8, 6]):
            writer.write(key, pack_payload(float(key % 2), png(key, size=side)[0], id=key))
    (tmp_path / "property").write_text("2,8,8\n")
    data = build_record_data(RecordSource(root=tmp_path))
    assert data.image_size == (8, 8)
    batch, _ = next(iter(make_loader(data.dataset, batch_size=4, num_workers=0)))
    assert batch.shape == (4, 3, 8, 8)
    RecordFile(tmp_path / "train.rec").close()


def test_pgm_files_are_images(tmp_path: Path) -> None:
    folder = folder_of_sizes(tmp_path / "f", [[(10, 8)], [(10, 8)]], suffix=".png")
    Image.fromarray(np.full((10, 8), 200, dtype=np.uint8), mode="L").save(folder / "c1/grey.pgm")
    classes, files, _ = scan_image_folder(folder)
    assert "c1/grey.pgm" in files
    image = decode_file(folder / "c1/grey.pgm")
    assert image.shape == (3, 10, 8) and int(image[2, 0, 0]) == 200


def test_no_images_message_lists_the_accepted_extensions(tmp_path: Path) -> None:
    (tmp_path / "f" / "alice").mkdir(parents=True)
    (tmp_path / "f" / "alice" / "face.gif.txt").write_text("no")
    with pytest.raises(UserError) as info:
        scan_image_folder(tmp_path / "f")
    assert all(ext in str(info.value) for ext in IMAGE_SUFFIXES) and ".pgm" in str(info.value)


def test_eqm_train_on_a_folder_of_mixed_sizes(tmp_path: Path, train_on_folder) -> None:
    folder = folder_of_sizes(tmp_path / "f", [[(24, 24), (30, 20)] * 3, [(28, 28), (24, 26)] * 3])
    result = train_on_folder(folder, tmp_path / "run")
    assert result.exit_code == 0, result.output


def test_one_rule_resolves_the_input_size_of_cli_and_trainer() -> None:
    """`model.input_size`, else the data's size (read, else the recipe's side or [H, W]),
    else the backbone's default: always a flat (height, width) of ints."""
    def recipe(model: dict, train: dict) -> Recipe:
        return Recipe.model_validate({"model": model, "data": {"train": train}})

    folder = {"kind": "image-folder", "root": "faces"}
    assert resolve_input_size(recipe({"input_size": [64, 48]}, folder), (112, 96)) == (64, 48)
    assert resolve_input_size(recipe({}, folder), (112, 96)) == (112, 96)
    assert resolve_input_size(recipe({}, {**folder, "image_size": [112, 96]})) == (112, 96)
    assert resolve_input_size(recipe({}, {**folder, "image_size": 40})) == (40, 40)
    assert resolve_input_size(recipe({"backbone": "sphere20"}, folder)) == (112, 96)
    assert resolve_input_size(recipe({}, {"kind": "synthetic", "image_size": 32})) == (32, 32)
