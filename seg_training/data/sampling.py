"""Samplers and collation that make data order and augmentation a function of (seed, epoch).

Data order: DistributedSampler's permutation, seeded with seed + epoch (one process is world size 1).
Augmentation: each item carries its own seed derived from (seed, epoch, index), which the data set
feeds to its albumentations pipeline. So a resumed run sees exactly the batches an uninterrupted run
would, whatever the number of workers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from .segmentation import NO_TEACHER


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit augmentation seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSampler(DistributedSampler):
    """DistributedSampler that yields (index, augmentation seed) pairs; call set_epoch every epoch."""

    def __init__(
        self, dataset: Sized, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        for index in super().__iter__():
            yield index, sample_seed(self.seed, self.epoch, index)


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r takes items r, r + world, ...; no padding, so summed statistics
    over ranks count every item exactly once."""

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, len(dataset), num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a DataLoader worker from torch's per-worker seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def pad_collate(
    batch: list[tuple[torch.Tensor, ...]], ignore_index: int = 255, size_divisor: int = 32
) -> tuple[torch.Tensor, ...]:
    """Stack (image, mask) pairs of different sizes, padding bottom/right (image 0, mask ignore).

    The padded size is a multiple of ``size_divisor``, as the packed runtime pads its inputs, and
    as networks with fixed strides (smp's DeepLabV3 wants multiples of 8) require. Items with a
    third tensor (a teacher map, SegmentationDataset) get it stacked too, padded with 255 ("no
    value").
    """
    height = -(-max(item[0].shape[-2] for item in batch) // size_divisor) * size_divisor
    width = -(-max(item[0].shape[-1] for item in batch) // size_divisor) * size_divisor
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], height, width))
    masks = torch.full((len(batch), height, width), ignore_index, dtype=torch.int64)
    extra = [torch.full((len(batch), height, width), NO_TEACHER, dtype=t.dtype) for t in batch[0][2:]]
    for i, (image, mask, *rest) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
        masks[i, : mask.shape[-2], : mask.shape[-1]] = mask
        for stacked, plane in zip(extra, rest, strict=True):
            stacked[i, : plane.shape[-2], : plane.shape[-1]] = plane
    return (images, masks, *extra)
