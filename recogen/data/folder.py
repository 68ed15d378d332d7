"""Images in class folders (torchvision ImageFolder layout), loaded into memory at one size.

Two layouts are understood:

* ``PATH/train/<class>/*`` plus ``PATH/val/<class>/*`` and optionally ``PATH/test/<class>/*``: the
  splits are used as given (without ``val/``, validation images are split off ``train/``);
* ``PATH/<class>/*``: one pool, split into train/val/test (stratified, seeded).

Every image is decoded with PIL and resized as it is read, so memory holds only the small copies.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageFile

from ..errors import DataError
from . import DATASETS
from .base import DataOptions, ImageSet, ImageSplits, finish_splits
from .pil_damage import damage_reason, refuse_damaged

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_SPLITS = ("train", "val", "test")
_LAYOUT = "PATH/<class>/<images> or PATH/train/<class>/<images> + PATH/val/<class>/<images>"
_SINGLE_CHANNEL_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_NAMED_BAD = 5  # bad files named in the skip warning


@dataclass
class _Tree:
    """One class-folder tree: image paths and their labels (indices into the class list)."""

    paths: list[Path]
    labels: list[int]


def _is_visible(p: Path) -> bool:
    # Hidden entries include macOS "._x.jpg" resource forks, which carry an image extension but
    # are not images, and ".ipynb_checkpoints"-style folders, which are not classes.
    return not p.name.startswith(".")


def _class_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _is_visible(p))


def _scan(root: Path, classes: list[str]) -> _Tree:
    """Collect the image files under ``root/<class>/`` (recursively) for each class present."""
    tree = _Tree([], [])
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue  # val/ and test/ may lack a class
        files = sorted(
            p for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and _is_visible(p)
        )
        if not files:
            raise DataError(
                f"class folder {folder} has no images ({' '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
            )
        tree.paths += files
        tree.labels += [label] * len(files)
    return tree


def _is_single_channel(img: Image.Image) -> bool:
    """Whether ``img`` holds grey values only (a palette image counts when its palette is grey)."""
    if img.mode in ("P", "PA"):
        palette = np.asarray(img.getpalette("RGB") or [0, 0, 0]).reshape(-1, 3)
        return bool((palette == palette[:, :1]).all())
    return img.mode in _SINGLE_CHANNEL_MODES


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit grayscale image as 8-bit ``L``, scaled (x * 255 / 65535, rounded); other modes unchanged.

    PIL's ``convert("L")`` clips 16-bit values at 255, which turns almost every pixel white.
    """
    if img.mode not in _SIXTEEN_BIT_MODES:
        return img
    arr = np.asarray(img).astype(np.int64).clip(0, 65535)
    return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), "L")


def open_verified(src) -> Image.Image:
    """``Image.open`` that first checks a PNG's chunk CRCs (Pillow checks those of the pixel data only in
    ``verify()``), so a damaged PNG raises instead of decoding to garbage. ``src``: a path or a seekable file."""
    img = Image.open(src)
    if img.format == "PNG":
        try:
            img.verify()  # reads every chunk to IEND and checks its CRC
        finally:
            img.close()
        if hasattr(src, "seek"):
            src.seek(0)
        img = Image.open(src)
    return img


def _base_mode(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit ``L`` or ``RGB`` (alpha dropped, as torchvision's pil_loader does)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        return to_8bit(img)
    if _is_single_channel(img):
        return img.convert("L")
    return img.convert("RGB")


class _BadImage(Exception):
    """A file that PIL cannot read; the message is the user-facing one-liner."""

    def __init__(self, path: Path, err: Exception):
        if isinstance(err, UserWarning):  # one of Pillow's damage warnings, raised as an error
            reason = damage_reason(err)
        else:
            reason = " ".join(str(err).split()) or type(err).__name__
        super().__init__(f"cannot read image {path}: {reason}; fix or remove it, or pass --skip-bad-images")


@contextmanager
def _strict_pil() -> Iterator[None]:
    """Make truncated files fail even if other code relaxed PIL's global flag, and damaged files that
    Pillow would only warn about fail too (:mod:`.pil_damage`)."""
    refuse_damaged()
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


# Pillow's plugins raise many exception types on malformed files (OSError, SyntaxError, ValueError,
# struct.error, ...), and Image.MAX_IMAGE_PIXELS raises DecompressionBombError for images over
# twice the limit; each means "this file is unreadable", so the PIL calls catch Exception.


def _probe(path: Path) -> tuple[bool, int]:
    """Read only the header: (single-channel?, shorter side)."""
    try:
        with Image.open(path) as img:
            return _is_single_channel(img), min(img.size)
    except Exception as e:
        raise _BadImage(path, e) from e


def _decode(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode one image fully and return it resized to (channels, size, size) uint8."""
    try:
        with open_verified(path) as img:
            img.draft(None, (size, size))  # JPEG: decode at a reduced scale that still covers ``size``
            img.load()  # decode now, so a truncated file fails here rather than passing silently
            img = _base_mode(img)
    except Exception as e:
        raise _BadImage(path, e) from e
    img = img.resize((size, size), Image.BILINEAR).convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _auto_size(short_sides: list[int]) -> int:
    """Median shorter side, rounded to a multiple of 8 and clamped to 16..224."""
    return int(min(224, max(16, 8 * round(float(np.median(short_sides)) / 8))))


def _load_all(paths: list[Path], opts: DataOptions) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Decode ``paths`` at one size and channel count; returns images, kept mask, bad files."""
    ok = np.ones(len(paths), dtype=bool)
    bad: list[Path] = []

    def failed(i: int, err: _BadImage) -> None:
        if not opts.skip_bad_images:
            raise DataError(str(err)) from None
        ok[i] = False
        bad.append(paths[i])

    channels, size = opts.channels, opts.image_size
    if channels is None or size is None:
        single, sides = [], []
        for i, p in enumerate(paths):
            try:
                s, side = _probe(p)
            except _BadImage as e:
                failed(i, e)
                continue
            single.append(s)
            sides.append(side)
        if not sides:
            raise DataError(f"none of the {len(paths)} image files could be read; check the files")
        channels = channels or (1 if all(single) else 3)
        size = size or _auto_size(sides)

    images = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    for i, p in enumerate(paths):
        if not ok[i]:
            continue
        try:
            images[i] = _decode(p, size, channels)
        except _BadImage as e:
            failed(i, e)
    return images, ok, bad


def _missing_classes(labels: torch.Tensor, classes: list[str]) -> list[str]:
    counts = np.bincount(labels.numpy(), minlength=len(classes))
    return [c for c, n in zip(classes, counts) if n == 0]


@DATASETS.register("folder", description=f"your images in class folders: folder:PATH with {_LAYOUT}")
def folder(arg: str | None, opts: DataOptions) -> ImageSplits:
    """Load an ImageFolder tree at ``arg`` into memory (see the module docstring for layouts)."""
    if not arg or not arg.strip():
        raise DataError(f"the folder data set needs a path: use folder:PATH with {_LAYOUT}")
    if opts.channels not in (None, 1, 3):
        raise DataError(f"cannot load images with {opts.channels} channels; use --channels 1 or 3")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder; expected {_LAYOUT}")

    split_dirs = {s: root / s for s in _SPLITS if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise DataError(
            f"{root} has {'/, '.join(split_dirs)}/ but no train/ folder; add {root / 'train'}/<class>/<images>"
        )
    class_root = split_dirs.get("train", root)
    classes = _class_dirs(class_root)
    if len(classes) < 2:
        raise DataError(
            f"found {len(classes)} class folder(s) in {class_root}; a classifier needs at least 2 ({_LAYOUT})"
        )
    for s in ("val", "test"):
        if s in split_dirs:
            extra = sorted(set(_class_dirs(split_dirs[s])) - set(classes))
            if extra:
                raise DataError(
                    f"{split_dirs[s]} has class folders missing from {class_root}: {', '.join(extra)}; "
                    f"every class needs images in train/"
                )

    trees = {s: _scan(d, classes) for s, d in (split_dirs or {"train": root}).items()}
    all_paths = [p for t in trees.values() for p in t.paths]
    all_labels = [y for t in trees.values() for y in t.labels]
    with _strict_pil():
        images, ok, bad = _load_all(all_paths, opts)

    sets: dict[str, ImageSet] = {}
    start = 0
    for s, tree in trees.items():
        part = slice(start, start + len(tree.paths))
        start = part.stop
        # A slice is a view; index only when files were skipped, so memory is not doubled.
        block = images[part] if ok[part].all() else images[part][ok[part]]
        keep = np.flatnonzero(ok[part]) + part.start
        sets[s] = ImageSet(
            torch.from_numpy(block),
            torch.tensor([all_labels[i] for i in keep], dtype=torch.long),
            [str(all_paths[i]) for i in keep],
        )
    missing = _missing_classes(sets["train"].labels, classes)
    if missing:
        raise DataError(f"no readable training images for class(es) {', '.join(missing)}; add images to {class_root}")

    if "val" in sets:
        train = sets["train"]
        if opts.limit is not None:
            train = train.subset(np.sort(np.random.default_rng(opts.seed).permutation(len(train))[: opts.limit]))
        splits = ImageSplits("folder", classes, train, sets["val"], sets.get("test"), hflip_ok=True)
    else:
        pool = sets["train"]
        splits = finish_splits(
            "folder", classes, pool.images, pool.labels, opts, test=sets.get("test"), hflip_ok=True, paths=pool.paths
        )

    if bad:
        names = ", ".join(str(p) for p in bad[:_NAMED_BAD]) + (", ..." if len(bad) > _NAMED_BAD else "")
        note = f"skipped {len(bad)} unreadable image(s): {names}"
        warnings.warn(note, stacklevel=2)
        splits.notes.append(note)
    return splits
