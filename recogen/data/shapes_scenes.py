"""``shapes`` for detection and segmentation: several overlapping shapes per image, with boxes and masks."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .base import DataOptions, convert_channels
from .dense import DENSE_DATASETS, DenseSet, DenseSplits, split_dense
from .shapes import SHAPE_CLASSES, render_scene


def make_scenes(n: int, size: int, seed: int, max_objects: int = 4, min_frac: float = 0.12, max_frac: float = 0.45) -> DenseSet:
    """``n`` seeded scenes of 1..max_objects shapes; the semantic mask holds 0 = background, k+1 = class k."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    boxes, labels = [], []
    for i in range(n):
        img, objs = render_scene(rng, size, int(rng.integers(1, max_objects + 1)), min_frac=min_frac, max_frac=max_frac)
        images[i] = img.transpose(2, 0, 1)
        for o in objs:
            masks[i][o["mask"]] = o["class_id"] + 1
        boxes.append(torch.tensor([o["box"] for o in objs], dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor([o["class_id"] for o in objs], dtype=torch.long))
    return DenseSet(torch.from_numpy(images), boxes, labels, torch.from_numpy(masks))


@DENSE_DATASETS.register("shapes", description="generated scenes of 1-4 overlapping shapes with boxes and masks, offline")
def shapes_scenes(arg: str | None, opts: DataOptions) -> DenseSplits:
    try:
        n = int(arg) if arg else 600
    except ValueError:
        raise DataError(f"bad shapes count {arg!r}; use the form shapes:COUNT, e.g. shapes:600") from None
    if n < 20:
        raise DataError(f"shapes:{n} is too few images to split; use shapes:COUNT with COUNT >= 20")
    size = opts.image_size or 64
    pool = make_scenes(n, size, opts.seed)
    pool.images = convert_channels(pool.images, opts.channels)
    return split_dense("shapes", list(SHAPE_CLASSES), ["background", *SHAPE_CLASSES], pool, opts)
