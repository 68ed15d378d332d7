"""Synthetic training images from a class-conditional generator run (``classify train --synthetic RUN:N``).

Only the training split grows: validation and test stay real, so every reported number is measured on
real images. The generated images are brought to the data set's size and channels the same way real
images are (antialiased resize, grayscale <-> RGB), and drawn with the run's seed so a resumed or
repeated run sees the same pixels.

A generator that trained on any of the data's val or test images would carry them into the training
split, and the reported figures would flatter the classifier; :func:`check_disjoint` refuses it. The rule,
using the generator run's ``splits.json`` (:mod:`recogen.data.manifest`):

- content: a val/test image overlaps when its sha1 is one of the generator's training images. Hashes are
  compared at one size and channel count: the classifier's val/test images are hashed as they are; when
  the generator trained at another size or channel count, its training split is rebuilt from the data
  spec and options its manifest records, at the classifier's size and channels (the same loader turns
  the same source image into the same pixels), after checking that the rebuild at its own size gives
  exactly the recorded hashes (else the data changed since, and nothing can be verified);
- files: a val/test image also overlaps when its source path is one of the generator's training files
  (catches the same file read through another data spec);
- an image that is also in the classifier's own training split is no leak (an exact duplicate inside
  the data set) and is not counted.

Copies of the images under other pixels (re-encoded, resized by another tool) are not detected.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import ConfigError, DataError, RunError
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


def _rebuilt_train(man: dict, image_size, channels: int):
    """The generator's training split rebuilt from its manifest's data spec and options."""
    from . import create_dataset
    from .base import DataOptions

    opts = {**man["options"], "image_size": image_size, "channels": channels}
    opts["data_dir"] = Path(opts["data_dir"])
    return create_dataset(man["data"], DataOptions(**opts)).train


def check_disjoint(run: Path, splits: ImageSplits) -> str:
    """Refuse (one-line :class:`DataError`) a generator run that trained on any val/test image of ``splits``.

    Returns how the check was made (for the training log). The rule is in this module's docstring.
    """
    from .manifest import MANIFEST, abs_paths, image_hashes, read_manifest

    run = Path(run)
    if not (run / MANIFEST).is_file():
        raise DataError(f"--synthetic: {run} has no {MANIFEST}, so nothing shows which images the generator trained "
                        "on (runs trained before recogen recorded their splits); retrain it with `recogen generate "
                        "train` to use it")
    man = read_manifest(run)
    gen = man["splits"]["train"]
    shape = [splits.channels, *splits.image_size]
    how = "content hashes"
    if man["image_shape"] == shape:
        gen_hashes = set(gen["sha1"])
    else:
        # Hashes only match at one size and channel count: re-render the generator's training images at the
        # classifier's, after proving the rebuild reproduces exactly the images the manifest recorded.
        if not man.get("options") or not man.get("data"):
            raise DataError(f"--synthetic: {run}/{MANIFEST} records no data options to rebuild the generator's training "
                            "images at this data's size; retrain the generator with `recogen generate train`")
        c, h, w = man["image_shape"]
        try:
            same = image_hashes(_rebuilt_train(man, h if h == w else (h, w), c).images) == gen["sha1"]
            rebuilt = _rebuilt_train(man, splits.image_size[0] if splits.image_size[0] == splits.image_size[1]
                                     else splits.image_size, splits.channels) if same else None
        except (DataError, OSError) as e:
            raise DataError(f"--synthetic: cannot rebuild the training images of {run} ({man['data']}) to check them "
                            f"against this data's val/test images: {e}") from None
        if rebuilt is None:
            raise DataError(f"--synthetic: the data {man['data']!r} no longer gives the images {run} trained on "
                            f"(their hashes differ from {MANIFEST}); retrain the generator on the current data")
        gen_hashes = set(image_hashes(rebuilt.images))
        how = f"content hashes at {shape[1]}x{shape[2]}x{shape[0]} (its data rebuilt from {MANIFEST})"
    gen_paths = {p for p in gen.get("paths") or () if not p.startswith("<")}
    own = set(image_hashes(splits.train.images))  # duplicates inside the data set leak nothing new
    counts = {}
    for name in ("val", "test"):
        ds = getattr(splits, name)
        if ds is None:
            continue
        hit = [x in gen_hashes and x not in own for x in image_hashes(ds.images)]
        if gen_paths and ds.paths is not None:
            hit = [a or p in gen_paths for a, p in zip(hit, abs_paths(ds.paths))]
        counts[name] = sum(hit)
    total = sum(counts.values())
    if total:
        parts = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        raise DataError(f"--synthetic: the generator in {run} trained on {total} of this data's val/test images "
                        f"({parts}), so its samples would carry them into training and flatter the figures; retrain "
                        f"it on this data with the same --seed, --val-fraction and --test-fraction (its training "
                        f"split is then disjoint from val/test), or on other data")
    return how + (" and source paths" if gen_paths else "")


def _load_generator(run: Path):
    """``(model, card)`` of the generate run in ``run`` (a RunError when it is damaged or of another task)."""
    from ..artifact import load_portable

    model, card = load_portable(run)
    if card.get("task") != "generate":
        raise RunError(f"{run} holds a {card.get('task')} model, not a generator")
    return model, card


def add_synthetic(splits: ImageSplits, spec: str, seed: int = 0, batch: int = 500) -> tuple[ImageSplits, str]:
    """``splits`` with N generated images per class appended to the training split, and a line saying so.

    The generator must be class-conditional and know every class of the data by name (its class order
    may differ: labels are mapped by name), and must not have trained on any of the data's val or test
    images (:func:`check_disjoint`; a run without ``splits.json`` is refused, as nothing shows what it saw).
    """
    from ..models.generators.base import sample_uint8

    run, per_class = parse_spec(spec)
    if not run.exists():
        raise ConfigError(f"--synthetic: no run folder {run}; train one with `recogen generate train --conditional`")
    model, card = _load_generator(run)
    classes: list[str] = card["classes"]
    if not card.get("conditional"):
        raise ConfigError(f"--synthetic: {run} is unconditional, so its images have no labels; train the generator "
                          "with `recogen generate train --conditional`")
    missing = [c for c in splits.classes if c not in classes]
    if missing:
        raise ConfigError(f"--synthetic: the generator in {run} does not know class(es) {', '.join(missing[:5])}; "
                          f"its classes are {', '.join(classes[:10])}")
    checked = check_disjoint(run, splits)
    images, labels = [], []
    for label, name in enumerate(splits.classes):
        # One seed per class (not one stream): adding a class to the data leaves the others' images alone.
        asked = classes.index(name)
        for i in range(0, per_class, batch):
            k = min(batch, per_class - i)
            images.append(sample_uint8(model, k, seed * 1_000_003 + label * 10_007 + i,
                                       torch.full((k,), asked, dtype=torch.long)))
            labels.append(torch.full((k,), label, dtype=torch.long))
    # Converted exactly as the data loaders convert real images.
    fake = resize_images(convert_channels(torch.cat(images), splits.channels), splits.image_size)
    train = splits.train
    paths = None if train.paths is None else [*train.paths, *(["<synthetic>"] * len(fake))]
    grown = ImageSet(torch.cat([train.images, fake]), torch.cat([train.labels, torch.cat(labels)]), paths)
    note = (f"synthetic: +{len(fake)} generated training images ({per_class} per class) from {run} "
            f"({card['model']}); val/test stay real, and none of them is among its training images ({checked})")
    return dataclasses.replace(splits, train=grown), note
