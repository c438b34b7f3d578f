"""The sample order of a run: a seeded permutation per epoch, resumable mid-epoch.

The order of epoch `e` is a permutation drawn from `(recipe.seed, e)`, so a run that
stops anywhere and resumes from its checkpoint sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from eqmcli.seeds import seeded_generator


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, optionally skipping the samples already consumed.

    With `tag_epoch` it yields `(epoch, index)` pairs, the keys of an `AugmentedDataset`.

    With `world_size` ranks, global step t takes the permutation's samples
    [t·N·B, (t+1)·N·B) and rank r the r-th block of `batch_size` (B) of them.
    """

    def __init__(
        self, num_samples: int, seed: int, *, rank: int = 0, world_size: int = 1,
        batch_size: int = 1, tag_epoch: bool = False,
    ) -> None:
        self.tag_epoch = tag_epoch
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.skip = 0
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the permutation of `epoch`; `skip` samples (a resumed epoch) are left out."""
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        generator = seeded_generator(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)[self.skip :]
        if self.world_size > 1:
            steps = len(order) // (self.world_size * self.batch_size)
            blocks = order[: steps * self.world_size * self.batch_size].view(
                steps, self.world_size, self.batch_size
            )
            order = blocks[:, self.rank].reshape(-1)
        if self.tag_epoch:
            return iter([(self.epoch, index) for index in order.tolist()])
        return iter(order.tolist())

    def __len__(self) -> int:
        if self.world_size > 1:
            steps = (self.num_samples - self.skip) // (self.world_size * self.batch_size)
            return steps * self.batch_size
        return self.num_samples - self.skip
