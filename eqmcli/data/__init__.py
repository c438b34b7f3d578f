"""Training data: one entry point, `build_train_data`, for every recipe data source.

Every dataset item is `(uint8 (3, H, W) RGB tensor, int label)`; the float conversion,
flip and normalization happen on the device (`eqmcli.data.transforms.to_model_input`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Dataset

from eqmcli.errors import UserError

if TYPE_CHECKING:
    from eqmcli.recipe import ImageFolderSource, RecordSource, SyntheticSource

__all__ = ["TrainData", "build_train_data"]


@dataclass
class TrainData:
    """A training set and what the trainer needs to know about it.

    `image_size` is (height, width) in pixels of the images `dataset` yields;
    `class_sizes` the number of training images of each class (int64 `(num_classes,)`);
    `test_dataset` the closed-set held-out images of the training classes, or None.
    """

    dataset: Dataset
    num_classes: int
    image_size: tuple[int, int]
    class_sizes: np.ndarray
    test_dataset: Dataset | None = None


def build_train_data(
    source: SyntheticSource | ImageFolderSource | RecordSource,
    *,
    strict: bool = False,
    bad_images_path: str | Path | None = None,
) -> TrainData:
    """Build the training data of a recipe's `data.train` source (dispatch on `kind`).

    `strict` makes an undecodable image an error instead of a counted, listed skip;
    `bad_images_path` is where such images are listed (file-backed sources only).
    """
    kind = getattr(source, "kind", None)
    if kind == "synthetic":
        from eqmcli.data.synthetic import synthetic_train_data

        dataset, test, sizes = synthetic_train_data(source)
        return TrainData(
            dataset=dataset,
            num_classes=int(len(sizes)),
            image_size=(dataset.image_size, dataset.image_size),
            class_sizes=sizes,
            test_dataset=test,
        )
    if kind == "image-folder":
        from eqmcli.data.image_folder import build_image_folder_data

        return build_image_folder_data(source, strict, bad_images_path)
    if kind == "record":
        from eqmcli.data.record import build_record_data

        return build_record_data(source, strict, bad_images_path)
    raise UserError(f"data.train.kind {kind!r} is not one of synthetic, image-folder, record")
