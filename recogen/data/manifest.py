"""The split manifest of a run: which images went into train, val and test (``splits.json``).

Every ``train`` writes it next to ``config.yaml``, so a later command can prove what a model saw:
``classify train --synthetic`` uses it to refuse a generator that trained on the classifier's val or
test images. Per split it records the number of images, one content hash per image (sha1 of the
image's shape and uint8 bytes, exactly as the model was fed them) and, when the data set has files,
each image's absolute source path; plus the data spec, seed and data options that rebuild the splits.

>>> write_manifest(run, splits, cfg)
>>> read_manifest(run)["splits"]["test"]["n"]
269
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunError
from ..utils import write_json

MANIFEST = "splits.json"
VERSION = 1
SPLITS = ("train", "val", "test")
HASH_RULE = "sha1 of b'CxHxW' followed by the image's uint8 bytes in (C, H, W) order"


def image_hashes(images: torch.Tensor) -> list[str]:
    """One hex sha1 per image of a uint8 batch (N, C, H, W); the shape is hashed too.

    About 1.5 us per 28x28 image and 90 us per 224x224x3 image on this project's CPUs (one hashlib
    call per image on a view of the batch's memory, no copies), so a manifest costs far less than
    a training epoch.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N,C,H,W), got {images.dtype} {tuple(images.shape)}")
    arr = np.ascontiguousarray(images.detach().cpu().numpy())
    header = "x".join(map(str, arr.shape[1:])).encode()
    out = []
    for img in arr:
        h = hashlib.sha1(header)
        h.update(img)  # the buffer itself: a C-contiguous row of the batch
        out.append(h.hexdigest())
    return out


def abs_paths(paths: list[str] | None) -> list[str] | None:
    # Absolute, so a later command run from another folder compares the same strings. Markers such as
    # "<synthetic>" (generated images) are not files and stay as they are.
    if paths is None:
        return None
    return [p if str(p).startswith("<") else os.path.abspath(p) for p in map(str, paths)]


def _split_entry(ds: Any) -> dict[str, Any] | None:
    if ds is None:
        return None
    entry: dict[str, Any] = {"n": len(ds.images), "sha1": image_hashes(ds.images)}
    paths = abs_paths(getattr(ds, "paths", None))
    if paths is not None:
        entry["paths"] = paths
    return entry


def _data_options(config: Any) -> dict[str, Any]:
    # The DataOptions fields a run config carries (TrainConfig uses the same names), as JSON values.
    from .base import DataOptions

    out = {}
    for f in dataclasses.fields(DataOptions):
        v = getattr(config, f.name, None)
        # data_dir absolute: a later command rebuilding the splits may run from another folder.
        out[f.name] = os.path.abspath(v) if f.name == "data_dir" and v is not None else v
    return out


def write_manifest(run_dir: str | Path, splits: Any, config: Any = None) -> Path:
    """Write ``splits.json`` into ``run_dir`` for ``splits`` (ImageSplits or DenseSplits); return its path.

    ``config`` (the run's resolved config) supplies the data spec, seed and data options; without it
    only the data set's name is recorded. A missing test split is recorded as ``null``.

    >>> write_manifest("runs/classify/digits", splits, cfg)
    """
    from .._version import __version__

    run_dir = Path(run_dir)
    images = splits.train.images
    doc = {
        "version": VERSION,
        "recogen": __version__,
        "data": getattr(config, "data", None) or splits.name,
        "dataset": splits.name,
        "seed": getattr(config, "seed", None),
        "options": _data_options(config) if config is not None else None,
        "image_shape": list(images.shape[1:]),
        "hash": HASH_RULE,
        "splits": {name: _split_entry(getattr(splits, name, None)) for name in SPLITS},
    }
    path = run_dir / MANIFEST
    write_json(path, doc)
    return path


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Read and check ``splits.json`` of a run; :class:`RunError` names the file when missing or corrupt."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise RunError(f"{Path(run_dir)} has no {MANIFEST} (runs trained before recogen recorded their splits "
                       "lack it); retrain the run to record which images it used")
    try:
        doc = json.loads(path.read_text())
        ok = isinstance(doc, dict) and doc.get("version") == VERSION and isinstance(doc.get("splits"), dict)
        for name in SPLITS if ok else ():
            e = doc["splits"].get(name)
            if e is None and name != "train":
                continue
            ok = ok and isinstance(e, dict) and isinstance(e.get("sha1"), list) and len(e["sha1"]) == e.get("n")
            ok = ok and ("paths" not in e or len(e["paths"]) == e["n"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise RunError(f"{path} is corrupt or from another recogen version (expected version {VERSION} with "
                       "train/val/test entries); retrain the run to rewrite it")
    return doc
