"""Batches straight from in-memory data sets, for every task (no per-image Python, no worker processes).

One seeded order for all: shuffling is seeded by ``(seed, epoch)``, so an epoch sees the same order
whether or not the run was interrupted and resumed before it. Conversion to float, augmentation and
normalisation happen after a batch reaches the device (in the task's LightningModule).

A batch is one gather (:func:`gather`) from the split's uint8 tensor, which may be a memory-mapped
``--cache`` file (only the batch's rows are read). When the batches go to a CUDA GPU the gather writes
straight into pinned (page-locked) memory, so Lightning's ``non_blocking`` copy to the GPU is a DMA
transfer that overlaps with the training step instead of a staged, synchronous one.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from ..errors import DataError


def cuda_in_use() -> bool:
    """Whether this process has started CUDA (a model or tensor is on a GPU): then batches are pinned.
    Asking does not start it, so a run on the CPU of a GPU machine pins nothing."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    # From CUDA's caching host allocator: a freed block is reused once the copies that read it are done.
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def gather(t: torch.Tensor, idx: torch.Tensor, pin: bool) -> torch.Tensor:
    """``t[idx]`` along the first dimension (a CPU tensor, int64 indices), into pinned memory when ``pin``.

    Copied by NumPy, whole rows at a time: torch's indexing (``t[idx]``, and ``index_select`` more so)
    copies uint8 images element by element, about 10x the CPU time at 224 px (measured on 2 cores)."""
    try:
        src, rows = t.numpy(), idx.numpy()
    except (TypeError, RuntimeError):  # a dtype NumPy lacks (bfloat16), or a tensor that needs grad
        return t[idx] if not pin else _pinned_empty((len(idx), *t.shape[1:]), t.dtype).copy_(t[idx])
    if not pin:
        return torch.from_numpy(src[rows])
    if len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < len(src):
        raise IndexError(f"batch index out of range for {len(src)} items")
    out = _pinned_empty((len(idx), *t.shape[1:]), t.dtype)
    np.take(src, rows, axis=0, out=out.numpy(), mode="clip")  # checked above; "raise" would copy via a buffer
    return out


class Batches:
    """Seeded batches of indices into a data set of ``len(ds)`` items; subclasses say what a batch holds.

    ``pin_memory``: gather batches into pinned memory; None (default) decides per epoch: when CUDA is in
    use in this process (:func:`cuda_in_use`)."""

    def __init__(self, ds: Any, batch_size: int, *, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 pin_memory: bool | None = None):
        self.ds, self.batch_size, self.shuffle, self.drop_last, self.seed = ds, batch_size, shuffle, drop_last, seed
        self.epoch = 0
        self.pin_memory = pin_memory
        self.pin = bool(pin_memory)

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        self.decide_pinning()
        for idx in self.indices():
            yield self.batch(idx)

    def decide_pinning(self) -> None:
        """Whether this epoch's batches are pinned (see ``pin_memory``); called as an epoch starts."""
        self.pin = cuda_in_use() if self.pin_memory is None else self.pin_memory

    def indices(self) -> Iterator[torch.Tensor]:
        """The items of each batch, in this epoch's order."""
        n = len(self.ds)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]

    def batch(self, idx: torch.Tensor) -> Any:
        raise NotImplementedError


class TensorBatches(Batches):
    """``(uint8 images, labels)`` batches of an :class:`~recogen.data.base.ImageSet`."""

    def batch(self, idx):
        return gather(self.ds.images, idx, self.pin), gather(self.ds.labels, idx, self.pin)


class DenseBatches(Batches):
    """``(uint8 images (B,C,H,W), [{"boxes", "labels"}], masks (B,H,W) | None)`` of a DenseSet (labels
    0..K-1). Masks (for box-tight augmentation) come along when asked for and the set has them."""

    def __init__(self, ds: Any, batch_size: int, *, masks: bool = False, **kw: Any):
        super().__init__(ds, batch_size, **kw)
        self.masks = masks and ds.masks is not None

    def batch(self, idx):
        targets = [{"boxes": self.ds.boxes[j], "labels": self.ds.labels[j]} for j in idx.tolist()]
        return gather(self.ds.images, idx, self.pin), targets, gather(self.ds.masks, idx, self.pin) if self.masks else None


class MaskBatches(Batches):
    """``(uint8 images (B,C,H,W), uint8 class masks (B,H,W))`` of a DenseSet with masks."""

    def __init__(self, ds: Any, batch_size: int, **kw: Any):
        if ds.masks is None:
            raise DataError("this data set has no masks; segmentation needs masks:PATH, coco: with segmentations, or shapes")
        super().__init__(ds, batch_size, **kw)

    def batch(self, idx):
        return gather(self.ds.images, idx, self.pin), gather(self.ds.masks, idx, self.pin)


class EpochSeeded:
    """Training batches that Lightning re-seeds each epoch through the ``sampler.set_epoch`` protocol.

    Only training batches are wrapped: Lightning inspects a validation loader that has a ``sampler``
    as if it were a DataLoader.

    In a run of several processes (DDP: a process group is initialised) ``batch_size`` is the global
    batch: every process draws the same seeded order and takes its own contiguous share of each batch
    (process r of W: items r*B/W to (r+1)*B/W), so the gradient DDP averages is the one a single process
    computes on the whole batch. Lightning adds its DistributedSampler only to DataLoaders; these are not.
    """

    def __init__(self, batches: Batches):
        self.batches = batches

    @property
    def sampler(self):
        return self

    def set_epoch(self, epoch: int) -> None:
        self.batches.epoch = epoch

    @property
    def epoch(self) -> int:
        return self.batches.epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return iter(self.batches)
        return self._shard(dist.get_rank(), dist.get_world_size())

    def _shard(self, rank: int, world: int):
        self.batches.decide_pinning()
        for idx in self.batches.indices():
            if len(idx) % world:
                raise DataError(f"a batch of {len(idx)} cannot be shared evenly by {world} processes; "
                                f"use a --batch-size that is a multiple of {world}")
            share = len(idx) // world
            yield self.batches.batch(idx[rank * share : (rank + 1) * share])
