"""Data sets by name: ``create_dataset("digits", opts)``, ``create_dataset("folder:PATH", opts)``.

A spec is ``NAME`` or ``NAME:ARG`` (the argument is a path for ``folder``, a count for ``shapes``).
Builders register themselves in :data:`DATASETS` when their module is imported.
"""
from __future__ import annotations

import importlib

from ..errors import DataError
from ..registry import Registry
from .base import DataOptions, ImageSet, ImageSplits

DATASETS: Registry = Registry("data set", error=DataError)

# Modules holding the builders; imported on first use so `recogen --help` stays fast.
_BUILDER_MODULES = ("digits", "mnist5k", "real_images", "shapes", "torchvision_sets", "folder_set", "hf_sets")


def _load_builders() -> None:
    for mod in _BUILDER_MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"folder:/x/y"`` into ``("folder", "/x/y")``; a bare name has no argument."""
    name, sep, arg = spec.partition(":")
    return name.strip(), (arg if sep else None)


def create_dataset(spec: str, opts: DataOptions | None = None) -> ImageSplits:
    """Build the train/val/test splits for the data set ``spec``."""
    _load_builders()
    name, arg = parse_spec(spec)
    entry = DATASETS.get(name)
    opts = opts or DataOptions()
    splits = entry.fn(arg, opts)
    if opts.cache and name != "folder":
        splits.notes.append(f"--cache is ignored: it caches folder:PATH images, and {name} is held in memory")
    return splits


def list_datasets() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered data set."""
    _load_builders()
    return [(e.name, e.meta.get("description", "")) for e in DATASETS]


__all__ = ["DATASETS", "DataOptions", "ImageSet", "ImageSplits", "create_dataset", "list_datasets", "parse_spec"]
