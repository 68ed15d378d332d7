"""Small shared helpers: atomic writes, seeding, devices."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash never leaves a half-written file.

    The temporary file ``.NAME.XXXX.tmp`` stays locked (``flock``) until the rename, so that
    :func:`remove_stale_temporaries` can tell the leftover of a killed writer from a write in progress.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if not _try_lock(fd):  # no advisory locks here (Windows, some network file systems); and on Windows
        os.close(fd)       # an open handle would block the rename
        fd = None
    try:
        write(tmp)
        # mkstemp makes the file 0600; a run's files get the usual mode (0644 under umask 022), or keep
        # the mode of the file they replace.
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; False where it cannot be had. The kernel
    releases it when the process ends, however it ends (SIGKILL included)."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except (ImportError, OSError):
        return False


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files (``.NAME.XXXX.tmp``) that killed :func:`atomic_write` calls of ``path``
    left beside it, and return them. Never read, they only take space (an export's or a checkpoint's
    size), and each kill adds one. A file is deleted only while this process holds its lock: one that a
    live process is writing (a concurrent export, a training's own writes) is locked and kept; where
    locks are not available nothing is deleted."""
    import glob

    path = Path(path)
    return _remove_unlocked(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def remove_stale_temporaries_in(folder: Path) -> list[Path]:
    """:func:`remove_stale_temporaries` for every file ``folder`` holds: all the ``.NAME.XXXX.tmp`` there
    that no live process is writing (``--resume`` clears a run folder's with it)."""
    return _remove_unlocked(Path(folder).glob(".*.tmp"))


def _remove_unlocked(candidates) -> list[Path]:
    """Delete each temporary file whose lock this process can take (so no live writer holds it)."""
    removed = []
    for tmp in candidates:
        try:
            fd = os.open(tmp, os.O_RDWR)  # writable: some network file systems lock only such files
        except OSError:
            continue  # gone meanwhile, or not ours to open
        try:
            if _try_lock(fd) and tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        finally:
            os.close(fd)
    return removed


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def check_writable_folder(folder: Path, flag: str = "--out", fix: str | None = None) -> None:
    """A clear error (ConfigError) unless ``folder`` is, or can be made as, a folder this process can
    write into; ``flag`` names it in the message and ``fix`` says what to do instead."""
    from .errors import ConfigError

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {folder} is a file, not a folder; choose a folder path")
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {folder} is inside {parent}, which is a file; choose a folder path")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        fix = fix or f"choose a writable {flag} or fix the folder's permissions"
        where = f"{flag} {folder}" if parent == folder else f"{parent}, where {flag} {folder} would be made"
        raise ConfigError(f"cannot write into {where} ({e.strerror or e}); {fix}") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda t: Path(t).write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def bf16_supported() -> bool:
    """True when the CPU running this process does bf16 matmuls natively (AVX512-BF16/AMX); elsewhere bf16 autocast is slow."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False
