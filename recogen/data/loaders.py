"""Batches straight from an in-memory :class:`ImageSet` (no per-image Python, no worker processes)."""
from __future__ import annotations

import torch

from .base import ImageSet


class TensorBatches:
    """Iterate ``(uint8 images, labels)`` batches of an ImageSet.

    Shuffling is seeded by ``(seed, epoch)``, so an epoch sees the same order whether or not the run
    was interrupted and resumed before it. The training module sets :attr:`epoch` each epoch.
    Conversion to float, augmentation and normalisation happen after the batch reaches the device.
    """

    def __init__(self, ds: ImageSet, batch_size: int, *, shuffle: bool = False, drop_last: bool = False, seed: int = 0):
        self.ds, self.batch_size, self.shuffle, self.drop_last, self.seed = ds, batch_size, shuffle, drop_last, seed
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.ds)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.ds.images[idx], self.ds.labels[idx]
