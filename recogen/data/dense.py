"""Images with per-object annotations, shared by detection and segmentation.

Every dense data set becomes a :class:`DenseSplits`: uint8 images at one training size, and per
image the objects' boxes (xyxy, pixels of the stored image) and class indices, plus a semantic mask
(class index per pixel, 255 = ignore). Object classes (``classes``) have no background; the mask's
classes (``seg_classes``) usually start with "background" at index 0.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry
from .base import DataOptions, SplitsBase, stratified_split

IGNORE_INDEX = 255

DENSE_DATASETS: Registry = Registry("detection/segmentation data set", error=DataError)
_BUILDER_MODULES = ("shapes_scenes", "digit_scenes", "formats", "hf_sets")


@dataclass
class DenseSet:
    """One split. ``images`` uint8 (N, C, H, W); ``boxes[i]`` float32 (K_i, 4) xyxy; ``labels[i]``
    int64 (K_i,) indices into ``classes``; ``masks`` uint8 (N, H, W) semantic class map or None;
    ``orig_sizes[i]`` the (H, W) the image had on disk (boxes are in the stored, resized frame)."""

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    masks: torch.Tensor | None = None
    paths: list[str] | None = None
    orig_sizes: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be uint8 (N, C, H, W)")
        if len(self.boxes) != n or len(self.labels) != n:
            raise ValueError("boxes/labels must have one entry per image")
        if self.masks is not None and tuple(self.masks.shape) != (n, *self.images.shape[-2:]):
            raise ValueError(f"masks must be (N, H, W) = {(n, *self.images.shape[-2:])}, got {tuple(self.masks.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "DenseSet":
        idx = [int(i) for i in idx]
        pick = lambda xs: [xs[i] for i in idx] if xs is not None else None  # noqa: E731
        t = torch.as_tensor(idx, dtype=torch.long)
        return DenseSet(self.images[t], pick(self.boxes), pick(self.labels),
                        self.masks[t] if self.masks is not None else None, pick(self.paths), pick(self.orig_sizes))


@dataclass
class DenseSplits(SplitsBase):
    name: str
    classes: list[str]  # object classes (detection), no background
    seg_classes: list[str]  # pixel classes of ``masks`` (segmentation), index = pixel value
    train: DenseSet
    val: DenseSet
    test: DenseSet | None = None
    notes: list[str] = field(default_factory=list)
    # False where a mirror image changes what an object is (digits, characters): augmentation then
    # never flips horizontally. Detection/segmentation boxes and masks would follow a flip, but the
    # class would be wrong: a mirrored "2" is not a "2".
    hflip_ok: bool = True


def split_dense(name: str, classes: list[str], seg_classes: list[str], pool: DenseSet, opts: DataOptions) -> DenseSplits:
    """Seeded train/val/test split of one pool (stratified by each image's first object's class)."""
    key = np.array([int(l[0]) if len(l) else -1 for l in pool.labels])
    train, val, test = stratified_split(key, (opts.val_fraction, opts.test_fraction), opts.seed)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"data set {name!r} is too small to split ({len(pool)} images); add images")
    if opts.limit is not None:
        train = np.sort(np.random.default_rng(opts.seed).permutation(train)[: opts.limit])
    return DenseSplits(name, classes, seg_classes, pool.subset(train), pool.subset(val),
                       pool.subset(test) if len(test) else None)


def _load_builders() -> None:
    for mod in _BUILDER_MODULES:
        importlib.import_module(f"{__package__}.{mod}")


def list_dense_datasets() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered detection/segmentation data set."""
    _load_builders()
    return [(e.name, e.meta.get("description", "")) for e in DENSE_DATASETS]


def create_dense_dataset(spec: str, opts: DataOptions | None = None) -> DenseSplits:
    """Build the splits of a detection/segmentation data set (``shapes``, ``coco:PATH``, ``yolo:PATH``, ``masks:PATH``)."""
    from . import parse_spec

    _load_builders()
    name, arg = parse_spec(spec)
    opts = opts or DataOptions()
    splits = DENSE_DATASETS.get(name).fn(arg, opts)
    if opts.cache:
        splits.notes.append("--cache is ignored: only folder:PATH data sets of classify and generate are cached")
    return splits
