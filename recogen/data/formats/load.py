"""Decoding parsed records into :class:`~recogen.data.dense.DenseSplits`: each image is decoded once,
resized to one square training size, with its semantic mask rasterised at the same size."""
from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...errors import DataError
from ..base import DataOptions
from ..dense import DenseSet, DenseSplits, split_dense
from ..folder import _base_mode, _BadImage, _strict_pil, open_verified
from .records import _ALL, _Paint, _read_mask, _Record, _Source


def auto_image_size(sizes: list[tuple[int, int]]) -> int:
    """Training size: the median shorter side rounded to a multiple of 32, clamped to 64..640."""
    med = float(np.median([min(s) for s in sizes])) if sizes else 64.0
    return int(min(640, max(64, 32 * round(med / 32))))


def _semantic_mask(rec: _Record) -> np.ndarray:
    """The (H, W) uint8 class map of one record at its on-disk size (pycocotools rasterises COCO shapes)."""
    if rec.mask_file is not None:
        return _read_mask(rec.mask_file)
    h, w = rec.size
    m = np.zeros((h, w), dtype=np.uint8)
    for p in rec.paint:
        if p.kind == "box":
            x0, y0, x1, y1 = p.data
            pix = np.zeros((h, w), dtype=bool)
            pix[int(math.floor(y0)):int(math.ceil(y1)), int(math.floor(x0)):int(math.ceil(x1))] = True
        else:
            pix = _rasterise(p, h, w)
        if p.only_background:
            pix &= m == 0
        m[pix] = p.value
    return m


def _rasterise(p: _Paint, h: int, w: int) -> np.ndarray:
    from pycocotools import mask as cmask

    try:
        if p.kind == "poly":
            rle = cmask.merge(cmask.frPyObjects(p.data, h, w))
        elif isinstance(p.data["counts"], list):
            rle = cmask.frPyObjects(p.data, h, w)
        else:
            counts = p.data["counts"]
            rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        out = cmask.decode(rle).astype(bool)
    except Exception as e:
        raise DataError(f"{p.where}: cannot decode the segmentation ({e}); fix or re-export it") from None
    if out.shape != (h, w):
        raise DataError(f"{p.where}: segmentation decodes to {out.shape[1]}x{out.shape[0]}, not {w}x{h}; fix it")
    return out


def _decode(rec: _Record, size: int, channels: int) -> np.ndarray:
    """Decode one image at (channels, size, size); an on-disk size that disagrees with its annotation is an error."""
    try:
        with open_verified(rec.path) as img:
            hw = (img.height, img.width)
            img.draft(None, (size, size))  # JPEG: decode at a reduced scale that still covers ``size``
            img.load()
            img = _base_mode(img)
    except Exception as e:
        raise _BadImage(rec.path, e) from e
    if hw != rec.size:
        raise DataError(f"image {rec.path} is {hw[1]}x{hw[0]} but {rec.size_from} says {rec.size[1]}x{rec.size[0]}; "
                        f"fix its width/height there")
    arr = np.asarray(img.resize((size, size), Image.BILINEAR).convert("L" if channels == 1 else "RGB"))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _to_set(recs: list[_Record], size: int, channels: int, with_masks: bool, bad: list[Path] | None) -> DenseSet:
    images = np.zeros((len(recs), channels, size, size), dtype=np.uint8)
    masks = np.zeros((len(recs), size, size), dtype=np.uint8) if with_masks else None
    ok = np.ones(len(recs), dtype=bool)
    boxes, labels = [], []
    with _strict_pil():
        for i, r in enumerate(recs):
            try:
                images[i] = _decode(r, size, channels)
            except _BadImage as e:
                if bad is None:
                    raise DataError(str(e)) from None
                bad.append(r.path)
                ok[i] = False
                continue
            h, w = r.size
            scale = np.array([size / w, size / h, size / w, size / h])
            boxes.append(torch.from_numpy((r.boxes * scale).astype(np.float32)).reshape(-1, 4))
            labels.append(torch.from_numpy(r.labels.astype(np.int64)))
            if masks is not None:
                masks[i] = np.asarray(Image.fromarray(_semantic_mask(r)).resize((size, size), Image.NEAREST))
    keep = [r for r, k in zip(recs, ok) if k]
    if not ok.all():
        images = images[ok]
        masks = masks[ok] if masks is not None else None
    return DenseSet(torch.from_numpy(images), boxes, labels, torch.from_numpy(masks) if masks is not None else None,
                    [str(r.path) for r in keep], [r.size for r in keep])


def _load(src: _Source, opts: DataOptions, bad: list[Path] | None) -> DenseSplits:
    if opts.channels not in (None, 1, 3):
        raise DataError(f"cannot load images with {opts.channels} channels; use --channels 1 or 3")
    channels = opts.channels or 3
    size = opts.image_size or auto_image_size([r.size for recs in src.splits.values() for r in recs])
    sets = {s: _to_set(recs, size, channels, src.has_masks, bad) for s, recs in src.splits.items()}
    for s, ds in sets.items():
        if len(ds) == 0:
            raise DataError(f"no readable images in the {s} split of the {src.name} data set; add images")
    if "val" in sets:
        train = sets["train"]
        if opts.limit is not None:
            train = train.subset(np.sort(np.random.default_rng(opts.seed).permutation(len(train))[: opts.limit]))
        out = DenseSplits(src.name, src.classes, src.seg_classes, train, sets["val"], sets.get("test"))
    else:
        pool = sets[_ALL] if _ALL in sets else sets["train"]
        out = split_dense(src.name, src.classes, src.seg_classes, pool,
                          replace(opts, test_fraction=0.0) if "test" in sets else opts)
        out.test = sets.get("test", out.test)
    out.notes += src.notes
    if bad:
        note = f"skipped {len(bad)} unreadable image(s): {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}"
        warnings.warn(note, stacklevel=3)
        out.notes.append(note)
    return out
