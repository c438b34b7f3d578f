"""Training data: one entry point, `build_train_data`, for every recipe data source.

Every dataset item is `(uint8 (3, H, W) RGB tensor, int label)`; the float conversion,
flip and normalization happen on the device (`eqmcli.data.transforms.to_model_input`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from eqmcli.data.image_folder import build_image_folder_data
from eqmcli.data.record import build_record_data
from eqmcli.data.synthetic import synthetic_train_data
from eqmcli.data.trainset import TrainData
from eqmcli.errors import UserError

if TYPE_CHECKING:
    from eqmcli.run.recipe import ImageFolderSource, RecordSource, SyntheticSource

__all__ = ["TrainData", "build_train_data"]


def build_train_data(
    source: SyntheticSource | ImageFolderSource | RecordSource,
    *,
    strict: bool = False,
    bad_images_path: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
) -> TrainData:
    """Build the training data of a recipe's `data.train` source (dispatch on `kind`).

    `strict` makes an undecodable image an error instead of a counted, listed skip;
    `bad_images_path` is where such images are listed (file-backed sources only);
    `input_size` (height, width) in pixels is the model input the recipe asks for
    (`model.input_size`): file-backed sources without their own `image_size` resize every
    image to it in the loader's workers, so `TrainData.image_size` equals it.
    """
    kind = getattr(source, "kind", None)
    if kind == "synthetic":
        dataset, test, sizes = synthetic_train_data(source)
        return TrainData(
            dataset=dataset,
            num_classes=int(len(sizes)),
            image_size=(dataset.image_size, dataset.image_size),
            class_sizes=sizes,
            test_dataset=test,
        )
    if kind == "image-folder":
        return build_image_folder_data(source, strict, bad_images_path, input_size)
    if kind == "record":
        return build_record_data(source, strict, bad_images_path, input_size)
    raise UserError(f"data.train.kind {kind!r} is not one of synthetic, image-folder, record")
