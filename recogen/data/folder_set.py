"""The ``folder:PATH`` data set: a class-folder tree decoded by :mod:`.folder` (in memory) or through
:mod:`.cache` (``--cache``: decoded once into a memory-mapped file). Kept apart from both so that the cache,
which builds on the folder's scanning and decoding, and the folder loader do not import each other."""
from __future__ import annotations

import warnings

import numpy as np

from . import DATASETS
from .base import DataOptions, ImageSplits
from .folder import _LAYOUT, _NAMED_BAD, _load, assemble, scan_folder


@DATASETS.register("folder", description=f"your images in class folders: folder:PATH with {_LAYOUT}")
def folder(arg: str | None, opts: DataOptions) -> ImageSplits:
    """Load an ImageFolder tree at ``arg`` (see the module docstring for layouts and ``opts.cache``)."""
    root, class_root, classes, trees = scan_folder(arg, opts)
    paths = [p for t in trees.values() for p in t.paths]
    labels = np.asarray([y for t in trees.values() for y in t.labels], dtype=np.int64)
    notes: list[str] = []
    if opts.cache:
        from .cache import cached_images  # lazily: plain folders never need it

        images, rows, bad, notes = cached_images(root, class_root, classes, trees, paths, labels, opts)
    else:
        images, rows, bad = _load(paths, labels, trees, opts, classes, class_root)
    splits = assemble(images, rows, paths, labels, classes, opts)
    splits.notes += notes
    if bad:
        names = ", ".join(str(paths[i]) for i in sorted(bad)[:_NAMED_BAD]) + (", ..." if len(bad) > _NAMED_BAD else "")
        note = f"skipped {len(bad)} unreadable image(s): {names}"
        warnings.warn(note, stacklevel=2)
        splits.notes.append(note)
    return splits
