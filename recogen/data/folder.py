"""Images in class folders (torchvision ImageFolder layout), loaded into memory at one size.

Two layouts are understood:

* ``PATH/train/<class>/*`` plus ``PATH/val/<class>/*`` and optionally ``PATH/test/<class>/*``: the
  splits are used as given (without ``val/``, validation images are split off ``train/``);
* ``PATH/<class>/*``: one pool, split into train/val/test (stratified, seeded).

Every image is decoded with PIL and resized as it is read, so memory holds only the small copies. The
files are decoded once, in DataLoader worker processes when there are many (:func:`decode_workers`),
straight into one uint8 array in which each split's rows follow each other: the splits are slices of it.
With ``DataOptions.cache`` (``--cache``) that array is a file beside the data that later runs memory-map
instead of decoding again (:mod:`recogen.data.cache`).
"""
from __future__ import annotations

import mmap
import multiprocessing
import os
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, ImageFile

from ..errors import DataError
from .base import DataOptions, ImageSet, ImageSplits, stratified_split
from .paths import PathTable
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
            if img.mode not in ("L", "RGB"):  # (for these two _base_mode would only copy)
                img = _base_mode(img)
    except Exception as e:
        raise _BadImage(path, e) from e
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    mode = "L" if channels == 1 else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _auto_size(short_sides: list[int]) -> int:
    """Median shorter side, rounded to a multiple of 8 and clamped to 16..224."""
    return int(min(224, max(16, 8 * round(float(np.median(short_sides)) / 8))))


# ------------------------------------------------------------------------------ parallel decoding
MIN_PARALLEL = 256  # fewer images decode in this process: starting worker processes costs more than it saves
_CHUNK = 16  # images per worker result (16 x 150 kB at 224 px RGB stays far below a small /dev/shm)
WORKERS_ENV = "RECOGEN_DATA_WORKERS"


def decode_workers(n_images: int, workers: int | None = None) -> int:
    """Worker processes that decode ``n_images`` files: ``workers`` when given, else $RECOGEN_DATA_WORKERS,
    else one per CPU up to 4 (the default of ``predict --workers``); 0 (this process) on one CPU, for fewer
    than :data:`MIN_PARALLEL` images, and inside a daemonic process, which cannot start children."""
    if workers is None:
        env = os.environ.get(WORKERS_ENV, "").strip()
        if env:
            if not env.isdigit():
                raise DataError(f"${WORKERS_ENV}={env!r}: it must be a whole number >= 0 (0: decode in the main process)")
            workers = int(env)
        else:
            cpus = os.cpu_count() or 1
            workers = min(4, cpus) if cpus > 1 and n_images >= MIN_PARALLEL else 0
    if workers and multiprocessing.current_process().daemon:
        return 0
    return workers


class _Files(torch.utils.data.Dataset):
    """Item ``i``: ``(i, result, error message or None)``. A probe (``size`` None) gives the header's
    (single-channel?, shorter side). A decode gives the (C, S, S) uint8 array, or, with ``out``, writes it
    into row ``rows[i]`` of ``out`` itself and gives None: ``out`` is an array (this process, or one shared
    with forked workers) or ``(file, offset of row 0, bytes per row)``, a file each process opens once and
    writes with ``pwrite`` (through a memory map, every 4 kB page of a new file costs a page fault: about
    4x the CPU time, measured)."""

    def __init__(self, paths: list[Path], size: int | None = None, channels: int | None = None,
                 out: np.ndarray | tuple[str, int, int] | None = None, rows: np.ndarray | None = None):
        self.paths, self.size, self.channels = PathTable(paths), size, channels
        self.out, self.rows, self._dest = out, rows, None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = Path(self.paths[i])
        try:
            if self.size is None:
                return i, _probe(path), None
            refuse_damaged()
            arr = _decode(path, self.size, self.channels)
        except _BadImage as e:
            return i, None, str(e)
        if self.out is None:
            return i, arr, None
        if isinstance(self.out, tuple):
            if self._dest is None:
                self._dest = os.open(self.out[0], os.O_WRONLY | getattr(os, "O_BINARY", 0))
            os.pwrite(self._dest, np.ascontiguousarray(arr).data, self.out[1] + int(self.rows[i]) * self.out[2])
        else:
            self.out[self.rows[i]] = arr
        return i, None, None

    def close(self) -> None:
        if isinstance(self._dest, int):
            os.close(self._dest)
            self._dest = None


def _worker_init(_: int) -> None:
    # A worker started by fork inherits these; one started by spawn/forkserver (macOS, Python 3.14) does not.
    refuse_damaged()
    ImageFile.LOAD_TRUNCATED_IMAGES = False


def _collate(items: list) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """``(indices, results, [(index, error)])`` of one chunk. Decoded images come stacked in one uint8 tensor
    in shared memory (as the DataLoader's own collate does in a worker), so only a handle crosses processes;
    a failed image's row is zeros."""
    idx = [i for i, _, _ in items]
    errors = [(i, err) for i, _, err in items if err is not None]
    results = [r for _, r, _ in items]
    good = next((r for r in results if isinstance(r, np.ndarray)), None)
    if good is None:
        return idx, results, errors
    out = torch.empty((len(items), *good.shape), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        out.share_memory_()
    arr = out.numpy()
    for k, r in enumerate(results):
        arr[k] = r if r is not None else 0
    return idx, out, errors


def _results(ds: _Files, workers: int) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
    """The chunks of ``ds`` in order, computed in ``workers`` DataLoader worker processes (0: here)."""
    if workers == 0:
        for start in range(0, len(ds), _CHUNK):
            yield _collate([ds[i] for i in range(start, min(start + _CHUNK, len(ds)))])
        return
    it = iter(torch.utils.data.DataLoader(ds, batch_size=_CHUNK, num_workers=workers, collate_fn=_collate,
                                          worker_init_fn=_worker_init, prefetch_factor=4))
    try:
        yield from it
    finally:  # also when the caller stops at an unreadable file: end the workers now, not when collected
        getattr(it, "_shutdown_workers", lambda: None)()


class _Unreadable:
    """The files found unreadable so far: an error at the first one, or (``--skip-bad-images``) a record."""

    def __init__(self, n: int, skip: bool):
        self.ok = np.ones(n, dtype=bool)
        self.skip = skip
        self.found: dict[int, str] = {}  # file index -> the error message

    def add(self, i: int, message: str) -> None:
        if not self.skip:
            raise DataError(message)
        self.ok[i] = False
        self.found[i] = message


def resolve_shape(paths: list[Path], opts: DataOptions, bad: _Unreadable, workers: int) -> tuple[int, int]:
    """``(channels, size)``: the options', or from the files' headers (all grey: 1; median shorter side)."""
    channels, size = opts.channels, opts.image_size
    if channels is not None and size is not None:
        return channels, size
    single, sides = [], []
    with _strict_pil(), closing(_results(_Files(paths), workers)) as chunks:
        for idx, results, errors in chunks:
            for i, err in errors:
                bad.add(i, err)
            for r in results:
                if r is not None:
                    single.append(r[0])
                    sides.append(r[1])
    if not sides:
        raise DataError(f"none of the {len(paths)} image files could be read; check the files")
    return channels or (1 if all(single) else 3), size or _auto_size(sides)


def _fork() -> bool:
    """Whether DataLoader workers start by fork here (they then share this process's memory maps)."""
    return multiprocessing.get_start_method(allow_none=False) == "fork"


def new_images(shape: tuple[int, ...], workers: int) -> np.ndarray:
    """An uninitialised uint8 array for :func:`decode_into`: with workers started by fork, in anonymous
    shared memory, so the workers write the decoded images into it directly (no copy through the parent)."""
    nbytes = int(np.prod(shape))
    if workers and nbytes and _fork():
        return np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.uint8).reshape(shape)
    return np.empty(shape, dtype=np.uint8)


def _is_mapped(arr: np.ndarray) -> bool:
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap)


def decode_into(dest: np.ndarray, paths: list[Path], rows: np.ndarray, size: int, channels: int, bad: _Unreadable,
                workers: int, npy: str | None = None) -> None:
    """Decode file ``i`` into ``dest[rows[i]]`` for every ``rows[i] >= 0`` (in file order, so the first
    unreadable file is the one reported); unreadable files go to ``bad``.

    The decoding process writes each image into ``dest`` itself where it can: into the ``.npy`` file
    ``npy`` that ``dest`` maps (the ``--cache`` build), into ``dest`` in this process (``workers`` 0), or
    from forked workers sharing ``dest`` (made by :func:`new_images`). Otherwise workers send each chunk
    back through shared memory and this process copies it in."""
    todo = np.flatnonzero(rows >= 0)
    out: np.ndarray | tuple[str, int, int] | None = None
    if npy is not None and isinstance(dest, np.memmap) and hasattr(os, "pwrite"):
        dest.flush()  # its header is written: the rows go to the file itself, after it
        out = (npy, int(dest.offset), int(np.prod(dest.shape[1:])))
    elif workers == 0 or (_is_mapped(dest) and not isinstance(dest, np.memmap) and _fork()):
        out = dest
    ds = _Files([paths[i] for i in todo], size, channels, out, rows[todo])
    try:
        with _strict_pil(), closing(_results(ds, workers)) as chunks:
            for idx, images, errors in chunks:
                for k, err in errors:
                    bad.add(int(todo[k]), err)
                if isinstance(images, torch.Tensor):
                    files = todo[idx]
                    good = bad.ok[files]
                    arr = images.numpy()
                    dest[rows[files[good]]] = arr if good.all() else arr[good]
    finally:
        ds.close()  # this process's file (the workers' close as they end)


# ------------------------------------------------------------------------------------ the splits
def split_rows(trees: dict[str, _Tree], labels: np.ndarray, ok: np.ndarray, opts: DataOptions, classes: list[str],
               class_root: Path) -> dict[str, np.ndarray]:
    """The readable files (indices into the trees' concatenated paths) of each split, in the split's order.

    ``train/`` + ``val/`` trees are used as given; one pool (``train/`` alone or no split folders) is split
    stratified and seeded into train/val (and test, unless there is a ``test/`` tree), exactly as
    :func:`~recogen.data.base.finish_splits` splits an in-memory pool. ``--limit`` is applied later.
    """
    kept, start = {}, 0
    for s, tree in trees.items():
        span = np.arange(start, start + len(tree.paths))
        start += len(tree.paths)
        kept[s] = span[ok[span]]
    counts = np.bincount(labels[kept["train"]], minlength=len(classes))
    missing = [c for c, n in zip(classes, counts) if n == 0]
    if missing:
        raise DataError(f"no readable training images for class(es) {', '.join(missing)}; add images to {class_root}")
    if "val" in kept:
        return kept
    pool = kept["train"]
    test_fraction = 0.0 if "test" in kept else opts.test_fraction
    train, val, test = stratified_split(labels[pool], (opts.val_fraction, test_fraction), opts.seed)
    if len(val) == 0 or len(train) == 0:
        raise DataError(f"data set 'folder' is too small to split ({len(pool)} images); add images or lower --val-fraction")
    out = {"train": pool[train], "val": pool[val]}
    if "test" in kept:
        out["test"] = kept["test"]
    elif len(test):
        out["test"] = pool[test]
    return out


def row_of(rows: dict[str, np.ndarray], n_files: int) -> np.ndarray:
    """File index -> its row when the splits are stored one after another (-1: not stored)."""
    order = np.concatenate(list(rows.values()))
    out = np.full(n_files, -1, dtype=np.int64)
    out[order] = np.arange(len(order))
    return out


def assemble(images: torch.Tensor, rows: dict[str, np.ndarray], paths: list[Path], labels: np.ndarray,
             classes: list[str], opts: DataOptions) -> ImageSplits:
    """The splits as consecutive slices (views) of ``images``, whose rows hold ``rows``' files in order."""
    sets, start = {}, 0
    for s, idx in rows.items():
        sets[s] = ImageSet(images[start : start + len(idx)], torch.as_tensor(labels[idx], dtype=torch.long),
                           [str(paths[i]) for i in idx])
        start += len(idx)
    train = sets["train"]
    if opts.limit is not None:  # the same images finish_splits keeps: a seeded choice among the training rows
        train = train.subset(np.sort(np.random.default_rng(opts.seed).permutation(len(train))[: opts.limit]))
    return ImageSplits("folder", classes, train, sets["val"], sets.get("test"), hflip_ok=True)


def _load(paths: list[Path], labels: np.ndarray, trees: dict[str, _Tree], opts: DataOptions, classes: list[str],
          class_root: Path) -> tuple[torch.Tensor, dict[str, np.ndarray], dict[int, str]]:
    """Decode the readable files into one uint8 array in memory, the splits' rows one after another."""
    workers = decode_workers(len(paths), opts.workers)
    bad = _Unreadable(len(paths), opts.skip_bad_images)
    channels, size = resolve_shape(paths, opts, bad, workers)
    rows = split_rows(trees, labels, bad.ok, opts, classes, class_root)
    where = row_of(rows, len(paths))
    images = new_images((int((where >= 0).sum()), channels, size, size), workers)
    decode_into(images, paths, where, size, channels, bad, workers)
    if not bad.ok[where >= 0].all():  # files that only failed when decoded: split again without them
        new = split_rows(trees, labels, bad.ok, opts, classes, class_root)
        images = images[where[np.concatenate(list(new.values()))]]
        rows = new
    return torch.from_numpy(images), rows, bad.found


def scan_folder(arg: str | None, opts: DataOptions) -> tuple[Path, Path, list[str], dict[str, _Tree]]:
    """Check the layout of ``folder:ARG``: ``(root, class root, classes, {split: files})``."""
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
    return root, class_root, classes, trees
