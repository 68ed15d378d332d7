"""torchvision's public data sets, downloaded to ``--data-dir`` when online.

Offline, the download fails within a fraction of a second; we turn that into one line saying which
files to place where.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import OfflineError
from . import DATASETS
from .base import DataOptions, ImageSet, ImageSplits, finish_splits

_SETS = {
    # name: (torchvision class, folder torchvision uses under root, files it expects, hflip_ok)
    "mnist": ("MNIST", "MNIST/raw", "train-images-idx3-ubyte.gz and the 3 other MNIST .gz files", False),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", "the 4 Fashion-MNIST .gz files", True),
    "cifar10": ("CIFAR10", "", "cifar-10-python.tar.gz", True),
    "cifar100": ("CIFAR100", "", "cifar-100-python.tar.gz", True),
}


def _load(name: str, root: Path, train: bool):
    import torchvision.datasets as tvd

    cls_name, sub, files, _ = _SETS[name]
    cls = getattr(tvd, cls_name)
    try:
        return cls(root=str(root), train=train, download=True)
    except Exception as e:  # URLError, HTTPError, RuntimeError("... not found") ...
        where = root / sub if sub else root
        raise OfflineError(
            f"could not get {name} ({type(e).__name__}: {str(e)[:80]}). When offline, place {files} in "
            f"{where} (or point --data-dir at a folder holding them), then run again."
        ) from None


def _to_imageset(ds) -> ImageSet:
    data = ds.data
    x = torch.as_tensor(np.asarray(data))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # MNIST: NHW; CIFAR: NHWC
    return ImageSet(x.contiguous().to(torch.uint8), torch.as_tensor(np.asarray(ds.targets), dtype=torch.long))


def _builder(name: str):
    def build(arg: str | None, opts: DataOptions) -> ImageSplits:
        root = Path(opts.data_dir).expanduser()
        train = _load(name, root, True)
        test = _load(name, root, False)
        pool = _to_imageset(train)
        return finish_splits(
            name, list(train.classes), pool.images, pool.labels, opts,
            test=_to_imageset(test), hflip_ok=_SETS[name][3],
        )

    return build


for _name in _SETS:
    DATASETS.register(_name, description=f"torchvision {_SETS[_name][0]}, downloaded to --data-dir")(_builder(_name))
