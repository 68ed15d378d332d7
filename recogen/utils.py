"""Small shared helpers: atomic writes, seeding, devices."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
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
