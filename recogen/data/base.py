"""The in-memory image set every classification dataset produces.

Small and medium data sets are kept as one uint8 tensor (N, C, H, W) per split: indexing a tensor
is far cheaper per image than a Dataset/DataLoader round trip when there are only a few CPU cores (measured on 2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError


@dataclass
class ImageSet:
    """One split: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,), optional source paths."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N,C,H,W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray | torch.Tensor) -> "ImageSet":
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        paths = [self.paths[i] for i in idx_t.tolist()] if self.paths is not None else None
        return ImageSet(self.images[idx_t], self.labels[idx_t], paths)


MEAN_STD_IN_ONE = 2**28  # uint8 values mean_std converts to float in one piece (1 GB as float32)


def _mean_std_in_slices(images: torch.Tensor, values_per_slice: int = 2**24) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std in [0, 1] of a uint8 (N, C, H, W) tensor, float64 sums by row slices."""
    n_ch = images.shape[1]
    step = max(1, values_per_slice // max(1, images[0].numel()))
    s = torch.zeros(n_ch, dtype=torch.float64)
    sq = torch.zeros(n_ch, dtype=torch.float64)
    for a in range(0, len(images), step):
        x = images[a : a + step].to(torch.float64).div_(255)
        s += x.sum(dim=(0, 2, 3))
        sq += x.square_().sum(dim=(0, 2, 3))
    n = images.numel() // n_ch
    mean = s / n
    std = ((sq - n * mean.square()) / max(1, n - 1)).clamp_min(0).sqrt().clamp_min(1e-3)
    return [round(float(v), 5) for v in mean], [round(float(v), 5) for v in std]


class SplitsBase:
    """What every train/val/test split container offers (classification and dense data alike)."""

    name: str
    train: Any

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    def split(self, name: str) -> Any:
        """Return split ``name`` (train/val/test); a missing test split is a clear error."""
        s = getattr(self, name, None) if name in ("train", "val", "test") else None
        if s is None:
            raise DataError(f"data set {self.name!r} has no {name!r} split; use --split val or --split train")
        return s

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of the training images in [0, 1] (stored with the model).

        A training split of more than :data:`MEAN_STD_IN_ONE` values (a memory-mapped ``--cache``, or any
        large set) is summed in float64 slices of rows instead of as one float copy (4x its size), once:
        the result is kept for the same tensor."""
        images = self.train.images
        if images.numel() <= MEAN_STD_IN_ONE:
            x = images.float().div_(255)
            mean = x.mean(dim=(0, 2, 3))
            std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
            return [round(float(v), 5) for v in mean], [round(float(v), 5) for v in std]
        key = (images.data_ptr(), tuple(images.shape))
        memo = self.__dict__.get("_mean_std")
        if memo is None or memo[0] != key:
            memo = (key, _mean_std_in_slices(images))
            self.__dict__["_mean_std"] = memo
        return memo[1]


@dataclass
class ImageSplits(SplitsBase):
    """Train/val/test splits of one data set plus what a model needs to know about it."""

    name: str
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet | None = None
    hflip_ok: bool = True  # False for digits/characters, where a mirror image is another symbol
    notes: list[str] = field(default_factory=list)



@dataclass
class DataOptions:
    """How to build a data set; shared by every dataset builder."""

    image_size: int | None = None  # None: the data set's natural size
    channels: int | None = None  # None: the data set's natural channels
    data_dir: Path = Path("data")
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    skip_bad_images: bool = False
    limit: int | None = None  # cap on training images (quick experiments)
    cache: bool = False  # folder: decode once into a memory-mapped uint8 file beside the data (data/cache.py)
    workers: int | None = None  # folder: processes decoding files (None: data.folder.decode_workers' default)


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, ...], seed: int
) -> list[np.ndarray]:
    """Split indices per class by ``fractions`` (the remainder is the first part), seeded.

    Returns one sorted index array per part: ``[rest, part1, part2, ...]``.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        sizes = [int(round(f * len(idx))) for f in fractions]
        for k, size in enumerate(sizes, start=1):
            parts[k].append(idx[start : start + size])
            start += size
        parts[0].append(idx[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def resize_images(images: torch.Tensor, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Resize a uint8 batch (N,C,H,W) with antialiasing; no-op when already that size."""
    if size is None:
        return images
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == hw:
        return images
    from torchvision.transforms.v2 import functional as F

    return F.resize(images, list(hw), antialias=True)


def convert_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Convert a uint8 batch between 1 and 3 channels (ITU-R 601 luma for RGB -> gray)."""
    if channels is None or images.shape[1] == channels:
        return images
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and images.shape[1] == 3:
        from torchvision.transforms.v2 import functional as F

        return F.rgb_to_grayscale(images)
    raise DataError(f"cannot convert {images.shape[1]}-channel images to {channels} channels; use --channels 1 or 3")


def finish_splits(
    name: str,
    classes: list[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    opts: DataOptions,
    *,
    test: ImageSet | None = None,
    hflip_ok: bool = True,
    paths: list[str] | None = None,
) -> ImageSplits:
    """Resize/convert one pool of images and split it (stratified, seeded) into train/val[/test].

    When ``test`` is given (an official test set) the pool is split into train/val only.
    """
    images = convert_channels(resize_images(images, opts.image_size), opts.channels)
    pool = ImageSet(images, labels, paths)
    fr_test = 0.0 if test is not None else opts.test_fraction
    train_idx, val_idx, test_idx = stratified_split(labels.numpy(), (opts.val_fraction, fr_test), opts.seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"data set {name!r} is too small to split ({len(labels)} images); add images or lower --val-fraction")
    if opts.limit is not None:
        train_idx = np.sort(np.random.default_rng(opts.seed).permutation(train_idx)[: opts.limit])
    if test is not None:
        test = ImageSet(convert_channels(resize_images(test.images, opts.image_size), opts.channels), test.labels, test.paths)
    elif len(test_idx):
        test = pool.subset(test_idx)
    return ImageSplits(name, classes, pool.subset(train_idx), pool.subset(val_idx), test, hflip_ok=hflip_ok)
