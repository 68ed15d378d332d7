"""sklearn's bundled handwritten digits (1,797 8x8 images), scaled up; works offline."""
from __future__ import annotations

import numpy as np
import torch

from . import DATASETS
from .base import DataOptions, ImageSplits, finish_splits


@DATASETS.register("digits", description="sklearn handwritten digits, 1,797 images of 8x8 scaled to 32 px, offline")
def digits(arg: str | None, opts: DataOptions) -> ImageSplits:
    from sklearn.datasets import load_digits

    d = load_digits()
    # Values are 0..16; scale to the full uint8 range before resizing.
    x = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    if opts.image_size is None:
        opts = DataOptions(**{**opts.__dict__, "image_size": 32})
    classes = [str(c) for c in d.target_names]
    return finish_splits("digits", classes, x, y, opts, hflip_ok=False)
