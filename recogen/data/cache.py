"""``--cache``: a ``folder:PATH`` data set decoded once into a uint8 file that later runs memory-map.

The first run decodes every image (in DataLoader worker processes, :func:`~recogen.data.folder.decode_into`)
at the run's size and channels into a NumPy ``.npy`` file of uint8 (N, C, S, S), written beside the data
folder (not inside it, where torchvision's ``ImageFolder`` and other tools would take it for a class):

    PARENT/.recogen-cache/NAME-<hash of PATH>/224x224-c3.json          the record: files, splits, unreadable
                                                                        files, the .npy's name
    PARENT/.recogen-cache/NAME-<hash of PATH>/224x224-c3-<digest>.npy  the images, the splits' rows in order
    PARENT/.recogen-cache/NAME-<hash of PATH>/auto.json                the size and channels chosen from the
                                                                        files' headers

for PATH = PARENT/NAME. Without ``--image-size``/``--channels`` a run chooses them from the headers, as an
uncached load does, once; the record is named by the choice, so a later run that states them (``eval``
does) finds it. Later runs read the record, check it against the folder and open the ``.npy`` with
``np.load(mmap_mode="r")``: no decoding, and the images are not read into memory. Each split is a slice
of the mapped file, so a training batch (``images[idx]``) reads only its own rows' pages, and a data set
larger than memory trains through the operating system's page cache; several processes (DDP) share one
copy of those pages.

Checks, each of which rebuilds with one line saying why: files added, removed or modified (size or
modification time; the record lists every file), a missing or short ``.npy``, another cache version.
A different ``--seed``/``--val-fraction``/``--test-fraction`` of a one-pool folder re-orders the rows
(copied from the old file, nothing decoded). Unreadable files (``--skip-bad-images``) are recorded:
a later run without that option stops at the first of them, as an uncached load does.

Writes are atomic: the ``.npy`` is written under a temporary name (``.NAME.XXXX.tmp``, locked while
written), flushed to disk and renamed when complete, then the record is replaced; a killed build leaves
only a temporary file, which nothing reads and the next build deletes. A lock file (``.lock``) makes a
second process (another DDP rank, a second run) wait for a build in progress and then use its result.

If PARENT is not writable (a shared, read-only data set), an existing cache there is still used;
otherwise the cache goes to ``$XDG_CACHE_HOME/recogen/folders/NAME-<hash of PATH>/`` (default
``~/.cache``), and the run says so.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import DataError
from ..utils import atomic_write, atomic_write_text, remove_stale_temporaries_in, write_json
from .base import DataOptions
from .folder import _Tree, _Unreadable, decode_into, decode_workers, resolve_shape, row_of, split_rows

log = logging.getLogger("recogen.data")

CACHE_DIR = ".recogen-cache"
VERSION = 1  # bump when the decoded pixels or the record change meaning
_COPY_ROWS = 256  # rows per step when re-ordering a cache


# ------------------------------------------------------------------------------------------ where
def _leaf(root: Path) -> str:
    root = root.resolve()
    return f"{root.name or 'root'}-{hashlib.sha1(os.fsencode(root)).hexdigest()[:8]}"


def cache_folder(root: Path) -> Path:
    """Where the cache of the data folder ``root`` goes: beside it, in ``PARENT/.recogen-cache/``."""
    return root.resolve().parent / CACHE_DIR / _leaf(root)


def user_cache_dir(root: Path) -> Path:
    """The fallback for a data folder whose parent is read-only: under the user's cache folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recogen" / "folders" / _leaf(root)


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------- records
def file_list(root: Path, paths: list[Path]) -> list[list[Any]]:
    """``[relative path, size, modification time in ns]`` of each file: what a cache is valid for."""
    out = []
    for p in paths:
        st = p.stat()
        out.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _changes(old: list[list[Any]], new: list[list[Any]]) -> str:
    """``"2 files added, 1 modified"``: how the folder differs from the one a cache was built from."""
    before = {f[0]: tuple(f[1:]) for f in old}
    after = {f[0]: tuple(f[1:]) for f in new}
    added = len(after.keys() - before.keys())
    removed = len(before.keys() - after.keys())
    modified = sum(1 for k in after.keys() & before.keys() if after[k] != before[k])
    parts = [f"{n} file{'s' if n != 1 else ''} {what}" for n, what in
             ((added, "added"), (removed, "removed"), (modified, "modified")) if n]
    return ", ".join(parts) or "the class folders or the split layout changed"


def _stale_reason(rec: dict[str, Any], files_digest: str, files: list[list[Any]], folder: Path) -> str | None:
    """Why the record ``rec`` (in ``folder``) cannot be used for these files; None when it can."""
    if rec.get("version") != VERSION:
        return "it was written by another version of the cache format"
    if rec.get("files_digest") != files_digest:
        return f"the folder changed since it was built ({_changes(rec.get('files', []), files)})"
    npy = folder / str(rec.get("npy", ""))
    try:
        with open(npy, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            complete = os.fstat(f.fileno()).st_size >= f.tell() + int(np.prod(shape))
    except (OSError, ValueError):
        return f"its image file {npy.name} is missing or unreadable"
    if list(shape) != rec.get("shape") or dtype != np.uint8 or fortran or not complete:
        return f"its image file {npy.name} does not hold the recorded {rec.get('shape')} uint8 images"
    return None


def _rows_from(rec: dict[str, Any]) -> dict[str, np.ndarray]:
    return {s: np.asarray(v, dtype=np.int64) for s, v in rec["rows"].items()}


def _same_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[s], b[s]) for s in a)


# ------------------------------------------------------------------------------------------ files
@contextmanager
def _lock(folder: Path, name: str) -> Iterator[None]:
    """Hold ``folder/.NAME.lock`` exclusively: one process builds a cache, the others wait for it."""
    fd = os.open(folder / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl
        except ImportError:  # no advisory locks (Windows): concurrent builds each write their own file
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info(f"waiting for another process that is building the cache in {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_images(npy: Path) -> torch.Tensor:
    """The cache file as a uint8 tensor backed by a read-only memory map (nothing is read until used).

    Indexing it (``images[idx]``, ``images[a:b].float()``) makes ordinary tensors; a slice is a view of
    the map, and writing into one would fault, which nothing in recogen does. torch warns once that it
    does not support non-writable arrays: a copy-on-write map (``mmap_mode="c"``) would be writable, but
    the kernel accounts such a private map as memory, so one larger than RAM can be refused."""
    arr = np.load(npy, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.from_numpy(arr)


def _check_disk(folder: Path, nbytes: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < nbytes + (64 << 20):
        raise DataError(f"the cache needs {nbytes / 1e9:.1f} GB but {folder} has {free / 1e9:.1f} GB free; "
                        f"free some space, or train without --cache")


def _new_file(folder: Path, name: str, shape: tuple[int, ...], fill) -> None:
    """Write ``folder/name`` (a .npy of uint8 ``shape``) atomically: ``fill(memmap, its file)`` writes its rows."""

    def write(tmp: str) -> None:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        fill(mm, tmp)
        mm.flush()
        del mm
        with open(tmp, "rb+") as f:  # on disk (also what worker processes wrote) before the rename makes it the cache
            os.fsync(f.fileno())

    atomic_write(folder / name, write)


def _reorder(src: torch.Tensor, src_rows: dict[str, np.ndarray], rows: dict[str, np.ndarray], n_files: int):
    """A ``fill`` that copies each row of ``rows``' order from where ``src_rows`` stored it."""
    take = row_of(src_rows, n_files)[np.concatenate(list(rows.values()))]
    arr = src.numpy()

    def fill(mm: np.ndarray, tmp: str) -> None:
        if not hasattr(os, "pwrite"):
            for a in range(0, len(take), _COPY_ROWS):
                mm[a : a + _COPY_ROWS] = arr[take[a : a + _COPY_ROWS]]
            return
        row_bytes = int(np.prod(mm.shape[1:]))
        with open(tmp, "r+b") as f:  # written, not through the map: see folder._Files
            for a in range(0, len(take), _COPY_ROWS):
                os.pwrite(f.fileno(), np.ascontiguousarray(arr[take[a : a + _COPY_ROWS]]).data,
                          int(mm.offset) + a * row_bytes)

    return fill


def _commit(folder: Path, name: str, rec: dict[str, Any]) -> None:
    """Replace the record ``name``.json, then delete the image files of this entry it no longer names."""
    atomic_write_text(folder / f"{name}.json", json.dumps(rec, separators=(",", ":")))  # compact: 100,000 files
    for old in folder.glob(f"{name}-*.npy"):
        if old.name != rec["npy"]:
            try:
                old.unlink()  # a process still using it keeps its map (POSIX)
            except OSError:
                pass


# ------------------------------------------------------------------------------------------- main
@dataclass
class _Data:
    """One ``folder:PATH`` load: the scanned files and the options."""

    root: Path
    class_root: Path
    classes: list[str]
    trees: dict[str, _Tree]
    paths: list[Path]
    labels: np.ndarray
    opts: DataOptions
    files: list[list[Any]]
    digest: str

    def rows(self, ok: np.ndarray) -> dict[str, np.ndarray]:
        return split_rows(self.trees, self.labels, ok, self.opts, self.classes, self.class_root)


def cached_images(root: Path, class_root: Path, classes: list[str], trees: dict[str, _Tree], paths: list[Path],
                  labels: np.ndarray, opts: DataOptions
                  ) -> tuple[torch.Tensor, dict[str, np.ndarray], dict[int, str], list[str]]:
    """``folder:PATH`` through its cache: ``(images (memory-mapped), rows of each split, unreadable files,
    notes)``, building or refreshing the cache first when needed (see the module docstring)."""
    files = file_list(root, paths)
    digest = _digest(VERSION, classes, {s: len(t.paths) for s, t in trees.items()}, files)
    d = _Data(root, class_root, classes, trees, paths, labels, opts, files, digest)
    own = cache_folder(root)
    folders = [own, user_cache_dir(root)]
    bad = _Unreadable(len(paths), opts.skip_bad_images)
    channels, size = _shape(d, folders, bad)
    name = f"{size}x{size}-c{channels}"
    reason = None
    for folder in folders:  # an existing, valid cache wherever it is (the data folder's may be read-only)
        rec = _read_record(folder / f"{name}.json")
        if rec is None:
            continue
        why = _stale_reason(rec, digest, files, folder)
        if why is None:
            return _use(d, folder, name, rec)
        reason = reason or f"the cache {folder / name}.json is out of date: {why}"

    folder = _writable_folder(folders)
    notes = [] if folder == own else [f"cannot write beside the data ({own}): the cache is in {folder}"]
    with _lock(folder, name):
        rec = _read_record(folder / f"{name}.json")  # another process may have built it while this one waited
        built = rec is None or _stale_reason(rec, digest, files, folder) is not None
        if built:
            if reason:
                log.info(reason + "; rebuilding it")
            remove_stale_temporaries_in(folder)  # leftovers of killed builds (never read); a live build's are locked
            rec = _build(d, folder, name, channels, size, bad)
    images, rows, unreadable, used = _use(d, folder, name, rec)
    if built:
        used = [f"decoded {len(images)} images once into the cache {folder / rec['npy']} in {rec['seconds']:.1f} s"]
    return images, rows, unreadable, notes + used


def _writable_folder(folders: list[Path]) -> Path:
    folder = next((f for f in folders if _writable(f)), None)
    if folder is None:
        raise DataError(f"cannot write a cache into {folders[0]} or {folders[1]} (both are read-only); "
                        "make one writable, or train without --cache")
    if folder != folders[0]:
        log.info(f"cannot write beside the data ({folders[0]}): the cache is in {folder}")
    return folder


def _shape(d: _Data, folders: list[Path], bad: _Unreadable) -> tuple[int, int]:
    """``(channels, size)`` of the cache: the options', else chosen from the files' headers as an uncached
    load does, once: the choice (and files whose header is unreadable) is kept in ``auto.json``."""
    opts = d.opts
    if opts.channels is not None and opts.image_size is not None:
        return opts.channels, opts.image_size
    rec = next((r for r in (_read_record(f / "auto.json") for f in folders)
                if r is not None and r.get("version") == VERSION and r.get("files_digest") == d.digest), None)
    if rec is None:
        probe = _Unreadable(len(d.paths), opts.skip_bad_images)
        channels, size = resolve_shape(d.paths, replace(opts, channels=None, image_size=None), probe,
                                       decode_workers(len(d.paths), opts.workers))
        rec = {"version": VERSION, "files_digest": d.digest, "channels": channels, "size": size,
               "unreadable": {str(i): m for i, m in sorted(probe.found.items())}}
        folder = next((f for f in folders if _writable(f)), None)
        if folder is not None:  # else probed again next time
            write_json(folder / "auto.json", rec)
    for i, message in sorted((int(i), m) for i, m in rec["unreadable"].items()):
        bad.add(i, message)  # without --skip-bad-images: the error an uncached load gives
    return opts.channels or rec["channels"], opts.image_size or rec["size"]


def _use(d: _Data, folder: Path, name: str, rec: dict[str, Any]
         ) -> tuple[torch.Tensor, dict[str, np.ndarray], dict[int, str], list[str]]:
    """Open a valid record's images; re-order them first if these options split the pool differently."""
    unreadable = {int(i): m for i, m in rec.get("unreadable", {}).items()}
    if unreadable and not d.opts.skip_bad_images:
        raise DataError(unreadable[min(unreadable)])  # as an uncached load: the first unreadable file
    ok = np.ones(len(d.paths), dtype=bool)
    ok[list(unreadable)] = False
    rows = d.rows(ok)
    stored = _rows_from(rec)
    images = open_images(folder / rec["npy"])
    if _same_rows(rows, stored):
        return images, rows, unreadable, [f"images from the cache {folder / rec['npy']} (memory-mapped)"]
    if not _writable(folder):  # a read-only cache, split another way: re-ordered into memory instead
        take = row_of(stored, len(d.paths))[np.concatenate(list(rows.values()))]
        return images[torch.from_numpy(take)], rows, unreadable, [f"images from the cache {folder / rec['npy']}"]
    with _lock(folder, name):
        log.info(f"re-ordering the cache {folder / name} for this split (another seed or fractions; nothing is decoded)")
        npy = _npy_name(name, d.digest, rows)
        _check_disk(folder, int(np.prod(rec["shape"])))
        _new_file(folder, npy, tuple(rec["shape"]), _reorder(images, stored, rows, len(d.paths)))
        rec = {**rec, "npy": npy, "rows": {s: r.tolist() for s, r in rows.items()}}
        _commit(folder, name, rec)
    return open_images(folder / npy), rows, unreadable, [f"images from the cache {folder / npy} (memory-mapped)"]


def _npy_name(name: str, digest: str, rows: dict[str, np.ndarray]) -> str:
    return f"{name}-{_digest(digest, {s: r.tolist() for s, r in rows.items()})[:12]}.npy"


def _build(d: _Data, folder: Path, name: str, channels: int, size: int, bad: _Unreadable) -> dict[str, Any]:
    """Decode the folder into a new cache file and record it; returns the record."""
    t0 = time.perf_counter()
    workers = decode_workers(len(d.paths), d.opts.workers)
    rows = d.rows(bad.ok)
    where = row_of(rows, len(d.paths))
    shape = (int((where >= 0).sum()), channels, size, size)
    nbytes = int(np.prod(shape))
    _check_disk(folder, nbytes)
    npy = _npy_name(name, d.digest, rows)
    log.info(f"decoding {shape[0]} images once into the cache {folder / npy} ({nbytes / 1e9:.2f} GB, "
             f"{workers or 'no'} worker processes)")
    _new_file(folder, npy, shape, lambda mm, tmp: decode_into(mm, d.paths, where, size, channels, bad, workers, tmp))
    if not bad.ok[where >= 0].all():  # files that only failed when decoded: split again without them
        new = d.rows(bad.ok)
        first, npy = npy, _npy_name(name, d.digest, new)
        shape = (int(sum(len(r) for r in new.values())), channels, size, size)
        _new_file(folder, npy, shape, _reorder(open_images(folder / first), rows, new, len(d.paths)))
        (folder / first).unlink(missing_ok=True)
        rows = new
    rec = {"version": VERSION, "root": str(d.root.resolve()), "files_digest": d.digest, "classes": d.classes,
           "channels": channels, "size": size, "npy": npy, "shape": list(shape),
           "rows": {s: r.tolist() for s, r in rows.items()},
           "unreadable": {str(i): m for i, m in sorted(bad.found.items())},
           "seconds": round(time.perf_counter() - t0, 1), "files": d.files}
    _commit(folder, name, rec)
    return rec
