"""A long list of file paths that forked DataLoader workers can read without copying it.

Reading a Python list's strings touches their reference counts, which copies the memory pages holding
them into every forked worker over an epoch (with a million files, hundreds of MB per worker). One bytes
object and one numpy offsets array are never written after construction, so their pages stay shared.
Used by the folder decoder (data/folder.py) and streaming predict (tasks/stream.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np


class PathTable:
    """Paths packed into one bytes object plus an array of end offsets; item ``i`` is path ``i`` as a str."""

    def __init__(self, paths: Iterable[str | Path]):
        raw = [os.fsencode(p) for p in paths]
        self.blob = b"".join(raw)
        self.ends = np.cumsum([len(r) for r in raw], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str:
        start = int(self.ends[i - 1]) if i else 0
        return os.fsdecode(self.blob[start : int(self.ends[i])])
