"""What every parser produces: one :class:`_Record` per image, gathered in a :class:`_Source`; plus the
checks and file helpers the parsers share (box validation, header probes, image listings, mask PNGs)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DataError
from ..folder import IMAGE_EXTENSIONS, _BadImage, open_verified

EDGE_TOLERANCE = 1.0  # px a box may overshoot the image edge (exporter rounding) before it is an error
MIN_COMPONENT_PIXELS = 4  # smaller connected components of a mask are speckles, not objects
_SPLITS = ("train", "val", "test")
_ALL = "all"  # split name of a pool that has no train/val split on disk


@dataclass
class _Paint:
    """One thing to paint into a semantic mask: a COCO polygon list / RLE dict or an xyxy box."""

    kind: str  # "poly" | "rle" | "box"
    data: object
    value: int  # pixel value written
    only_background: bool = False  # True: paint only where the mask is still 0 (unknown extents)
    where: str = ""  # for error messages


@dataclass
class _Record:
    path: Path
    rel: str  # path under the split's image root, kept by conversions
    size: tuple[int, int]  # (H, W) on disk
    boxes: np.ndarray  # (K, 4) float64 xyxy, on-disk pixels, validated and clipped
    labels: np.ndarray  # (K,) int64 indices into classes
    paint: list[_Paint] = field(default_factory=list)
    mask_file: Path | None = None  # masks format: the mask PNG itself
    size_from: str | None = None  # annotation file the size came from (checked when decoded)


@dataclass
class _Source:
    name: str
    classes: list[str]
    seg_classes: list[str]
    splits: dict[str, list[_Record]]  # train/val/test as on disk, or {"all": pool}
    has_masks: bool
    notes: list[str] = field(default_factory=list)
    crowd: int = 0  # crowd annotations (ignore regions; conversions cannot carry them)


def _spec_path(fmt: str, arg: str | None, usage: str) -> Path:
    """The PATH of ``fmt:PATH``; a missing or blank one is a DataError that shows ``usage``."""
    if not arg or not arg.strip():
        raise DataError(f"the {fmt} data set needs a path; {usage}")
    return Path(arg).expanduser()


def _check_box(box, size: tuple[int, int], where: str) -> np.ndarray:
    """Validate an xyxy box against an (H, W) image; clip overshoots up to EDGE_TOLERANCE px."""
    h, w = size
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise DataError(f"{where}: box has a non-finite coordinate; fix or delete the box")
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise DataError(f"{where}: box has width {x1 - x0:g} and height {y1 - y0:g}; both must be positive (fix or delete the box)")
    t = EDGE_TOLERANCE
    if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
        raise DataError(f"{where}: box [{x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}] (xyxy) lies outside the "
                        f"{w}x{h} image; fix the box or the image size")
    out = np.array([min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)])
    if out[2] - out[0] <= 0 or out[3] - out[1] <= 0:
        raise DataError(f"{where}: box [{x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}] lies outside the {w}x{h} image; fix the box")
    return out


def _boxes(rows: list) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _probe(path: Path, bad: list[Path] | None) -> tuple[int, int] | None:
    """(H, W) from the image header; an unreadable file is a DataError (or skipped into ``bad``)."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Exception as e:
        if bad is None:
            raise DataError(str(_BadImage(path, e))) from None
        bad.append(path)
        return None


def _image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files in ``folder`` (and its subfolders when ``recursive``), sorted; hidden files are left out."""
    return sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir())
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith("."))


def _read_mask(path: Path) -> np.ndarray:
    """A mask PNG as an (H, W) uint8 class map (255 = ignore); anything else is a DataError naming the file."""
    try:
        with open_verified(path) as m:
            m.load()
            mode = m.mode
            arr = np.asarray(m)
    except Exception as e:
        raise DataError(str(_BadImage(path, e)).replace(", or pass --skip-bad-images", "")) from None
    if mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise DataError(f"mask {path} is a {mode} image; save class indices as a single-channel PNG (mode L or P)")
    if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
        raise DataError(f"mask {path} has pixel values outside 0..255; class indices must be 0..254 (255 = ignore)")
    return arr.astype(np.uint8)
