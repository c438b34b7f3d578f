"""`TrainData`: what every training source hands the trainer (kept apart from the sources
so that each of them, and `eqmcli.data`, can import it at the top)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset


@dataclass
class TrainData:
    """A training set and what the trainer needs to know about it.

    `image_size` is (height, width) in pixels of the images `dataset` yields (every item
    has that size; file-backed sources resize in the loader's workers); `class_sizes` the
    number of training images of each class (int64 `(num_classes,)`); `test_dataset` the
    closed-set held-out images of the training classes, or None; `class_names` the name of
    each class (an image folder's identity folders), or None where the source has none.
    """

    dataset: Dataset
    num_classes: int
    image_size: tuple[int, int]
    class_sizes: np.ndarray
    test_dataset: Dataset | None = None
    class_names: list[str] | None = None
