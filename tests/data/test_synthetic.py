"""Synthetic identities: determinism, sizes, class-size profiles, splits, verification pairs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from eqmcli.data import TrainData, build_train_data
from eqmcli.data.synthetic import (
    TEST_SAMPLE_OFFSET,
    VERIFICATION_ID_OFFSET,
    SyntheticFaces,
    class_sizes,
)
from eqmcli.evaluation.pair_sets import VerificationSet, synthetic_verification_set
from eqmcli.run.recipe import SyntheticSource


def small_source(**overrides: object) -> SyntheticSource:
    fields: dict[str, object] = dict(
        num_classes=12,
        min_images=3,
        max_images=20,
        image_size=32,
        test_images_per_class=2,
        verification_identities=12,
        verification_folds=3,
        verification_pairs_per_fold=4,
    )
    fields.update(overrides)
    return SyntheticSource(**fields)


def test_build_train_data_synthetic() -> None:
    data = build_train_data(small_source())
    assert isinstance(data, TrainData)
    assert data.num_classes == 12
    assert data.image_size == (32, 32)
    assert data.class_sizes.dtype == np.int64 and data.class_sizes.shape == (12,)
    assert int(data.class_sizes.sum()) == len(data.dataset)
    assert np.array_equal(np.bincount(data.dataset.labels, minlength=12), data.class_sizes)
    assert data.test_dataset is not None and len(data.test_dataset) == 12 * 2
    assert build_train_data(small_source(test_images_per_class=0)).test_dataset is None


@pytest.mark.parametrize("size", [16, 33, 48, 112])
def test_item_dtype_shape_and_label(size: int) -> None:
    data = build_train_data(small_source(image_size=size))
    image, label = data.dataset[len(data.dataset) - 1]
    assert image.dtype == torch.uint8 and image.shape == (3, size, size)
    assert isinstance(label, int) and label == data.dataset.labels[-1]
    assert image.float().std() > 5  # not a blank image


def test_deterministic_and_seed_dependent() -> None:
    a = build_train_data(small_source(seed=1)).dataset
    b = build_train_data(small_source(seed=1)).dataset
    c = build_train_data(small_source(seed=2)).dataset
    assert torch.equal(a[5][0], b[5][0])
    assert torch.equal(a[5][0], a[5][0])
    assert not torch.equal(a[5][0], c[5][0])
    assert not torch.equal(a[5][0], a[6][0])  # two samples of a class differ


def test_sample_independent_of_batch_composition() -> None:
    ds = build_train_data(small_source()).dataset
    batch = ds.render([7, 0, 3, 7])
    assert torch.equal(batch[0], ds[7][0]) and torch.equal(batch[3], ds[7][0])
    assert torch.equal(batch[1], ds[0][0]) and torch.equal(batch[2], ds[3][0])
    many = ds.render(np.arange(len(ds)))  # crosses render chunks
    assert torch.equal(many[len(ds) - 1], ds[len(ds) - 1][0])
    items = ds.__getitems__([2, 4])
    assert torch.equal(items[1][0], ds[4][0]) and items[1][1] == ds[4][1]


def test_difficulty_zero_renders_the_clean_identity() -> None:
    """At difficulty 0 only the scene (background, clothes) changes: the face is fixed."""
    for difficulty, same in ((0.0, True), (1.0, False)):
        ds = build_train_data(small_source(difficulty=difficulty)).dataset
        first, second = np.flatnonzero(ds.labels == ds.labels[0])[:2]
        a, b = ds[int(first)][0], ds[int(second)][0]
        centre = slice(11, 21)  # the middle of the face at 32 px
        assert torch.equal(a[:, centre, centre], b[:, centre, centre]) is same
        assert not torch.equal(a, b)


def test_casia_like_profile_defaults() -> None:
    sizes = class_sizes(200, "casia-like", 10, 400, seed=0)
    assert sizes.min() == 10 and sizes.max() == 400
    assert 0.85 <= (sizes < 80).mean() <= 0.95  # most classes are small
    assert np.median(sizes) < 25 and (sizes >= 200).sum() >= 3  # ... with a long tail
    assert np.sort(sizes)[-1] > 5 * np.median(sizes)
    assert np.array_equal(np.sort(sizes), np.sort(class_sizes(200, "casia-like", 10, 400, seed=1)))
    assert not np.array_equal(sizes, class_sizes(200, "casia-like", 10, 400, seed=1))


def test_uniform_profile() -> None:
    sizes = class_sizes(7, "uniform", 3, 9)
    assert np.array_equal(sizes, np.full(7, 9))
    data = build_train_data(small_source(profile="uniform", max_images=5))
    assert len(data.dataset) == 12 * 5


def test_test_split_disjoint_from_training_samples() -> None:
    data = build_train_data(small_source())
    train, test = data.dataset, data.test_dataset
    assert isinstance(train, SyntheticFaces) and isinstance(test, SyntheticFaces)
    train_keys = set(zip(train.identity_ids[train.rows], train.sample_indices, strict=True))
    test_keys = set(zip(test.identity_ids[test.rows], test.sample_indices, strict=True))
    assert not train_keys & test_keys
    assert (test.sample_indices >= TEST_SAMPLE_OFFSET).all()
    assert np.array_equal(np.bincount(test.labels), np.full(12, 2))
    # same identity as training class, different image
    label = 3
    train_img = train[int(np.flatnonzero(train.labels == label)[0])][0]
    test_img = test[int(np.flatnonzero(test.labels == label)[0])][0]
    assert not torch.equal(train_img, test_img)


def test_verification_layout() -> None:
    source = small_source()
    vset = synthetic_verification_set(source)
    assert isinstance(vset, VerificationSet)
    folds, per_fold = 3, 4
    assert vset.folds == folds and vset.num_pairs == 2 * folds * per_fold
    assert vset.pairs.dtype == np.int64 and vset.issame.dtype == bool
    expected = np.tile(np.r_[np.ones(per_fold, bool), np.zeros(per_fold, bool)], folds)
    assert np.array_equal(vset.issame, expected)
    images = vset.images
    assert isinstance(images, SyntheticFaces)
    ids = images.identity_ids[images.rows]
    first, second = ids[vset.pairs[:, 0]], ids[vset.pairs[:, 1]]
    assert np.array_equal(first == second, vset.issame)
    # every image is a distinct sample
    keys = set(zip(ids, images.sample_indices, strict=True))
    assert len(keys) == len(images)
    # held-out identities are never training identities
    train = build_train_data(source).dataset
    assert not set(ids) & set(train.identity_ids)
    assert (ids >= VERIFICATION_ID_OFFSET).all()
    # folds are identity-disjoint when there are enough identities
    block = 2 * per_fold
    fold_ids = [set(first[f * block : (f + 1) * block]) | set(second[f * block : (f + 1) * block])
                for f in range(folds)]
    for f in range(folds):
        for g in range(f + 1, folds):
            assert not fold_ids[f] & fold_ids[g]
    image, _ = images[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)


def test_verification_deterministic_and_independent_of_training_classes() -> None:
    a = synthetic_verification_set(small_source())
    b = synthetic_verification_set(small_source(num_classes=5, max_images=7))
    assert np.array_equal(a.pairs, b.pairs) and np.array_equal(a.issame, b.issame)
    assert torch.equal(a.images[9][0], b.images[9][0])
    c = synthetic_verification_set(small_source(seed=3))
    assert not torch.equal(a.images[9][0], c.images[9][0])


def test_verification_few_identities_share_folds() -> None:
    vset = synthetic_verification_set(small_source(verification_identities=3))
    ids = vset.images.identity_ids[vset.images.rows]
    first, second = ids[vset.pairs[:, 0]], ids[vset.pairs[:, 1]]
    assert np.array_equal(first == second, vset.issame)
    assert set(first) | set(second) <= set(VERIFICATION_ID_OFFSET + np.arange(3))


def test_pickles_and_loads_in_workers() -> None:
    ds = build_train_data(small_source(image_size=24)).dataset
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[3][0], ds[3][0])
    loader = DataLoader(ds, batch_size=8, num_workers=2)
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 24, 24)
    assert labels.dtype == torch.int64
    assert torch.equal(images, ds.render(range(8)))
    assert torch.equal(labels, torch.from_numpy(ds.labels[:8]))
