"""Synthetic training images from a class-conditional generator run (``classify train --synthetic RUN:N``).

Only the training split grows: validation and test stay real, so every reported number is measured on
real images. The generated images are brought to the data set's size and channels the same way real
images are (antialiased resize, grayscale <-> RGB), and drawn with the run's seed so a resumed or
repeated run sees the same pixels.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import ConfigError
from .base import ImageSet, ImageSplits, convert_channels, resize_images

MAX_PER_CLASS = 100_000


def parse_spec(spec: str) -> tuple[Path, int]:
    """``RUN:N`` -> (run folder, N per class); the run may itself contain colons (split at the last one)."""
    run, sep, n = spec.rpartition(":")
    if not sep or not run:
        raise ConfigError(f"--synthetic must be RUN:N (a generate run folder and images per class), got {spec!r}")
    try:
        k = int(n)
    except ValueError:
        raise ConfigError(f"--synthetic {spec!r}: N must be a whole number of images per class, got {n!r}") from None
    if not 1 <= k <= MAX_PER_CLASS:
        raise ConfigError(f"--synthetic {spec!r}: N must be 1..{MAX_PER_CLASS} images per class")
    return Path(run), k


def add_synthetic(splits: ImageSplits, spec: str, seed: int = 0, batch: int = 500) -> tuple[ImageSplits, str]:
    """``splits`` with N generated images per class appended to the training split, and a line saying so.

    The generator must be class-conditional and know every class of the data by name (its class order
    may differ: labels are mapped by name).
    """
    from ..tasks import generate

    run, per_class = parse_spec(spec)
    if not run.exists():
        raise ConfigError(f"--synthetic: no run folder {run}; train one with `recogen generate train --conditional`")
    gen = generate.load(run)
    if not gen.conditional:
        raise ConfigError(f"--synthetic: {run} is unconditional, so its images have no labels; train the generator "
                          "with `recogen generate train --conditional`")
    missing = [c for c in splits.classes if c not in gen.classes]
    if missing:
        raise ConfigError(f"--synthetic: the generator in {run} does not know class(es) {', '.join(missing[:5])}; "
                          f"its classes are {', '.join(gen.classes[:10])}")
    images, labels = [], []
    for label, name in enumerate(splits.classes):
        # One seed per class (not one stream): adding a class to the data leaves the others' images alone.
        for i in range(0, per_class, batch):
            k = min(batch, per_class - i)
            images.append(gen.sample(k, seed=seed * 1_000_003 + label * 10_007 + i, class_=name))
            labels.append(torch.full((k,), label, dtype=torch.long))
    # Converted exactly as the data loaders convert real images.
    fake = resize_images(convert_channels(torch.cat(images), splits.channels), splits.image_size)
    train = splits.train
    paths = None if train.paths is None else [*train.paths, *(["<synthetic>"] * len(fake))]
    grown = ImageSet(torch.cat([train.images, fake]), torch.cat([train.labels, torch.cat(labels)]), paths)
    note = (f"synthetic: +{len(fake)} generated training images ({per_class} per class) from {run} "
            f"({gen.card['model']}); val/test stay real")
    return dataclasses.replace(splits, train=grown), note
