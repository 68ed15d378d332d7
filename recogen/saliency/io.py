"""Writing explanations: ``NAME.METHOD.png`` (the overlay, at the image's own size) and ``NAME.METHOD.npy``
(the float32 map in [0, 1] at the model's input size) per image, NAME the image file's stem; a
detection run's explanations are per box: ``NAME.METHOD.boxK.png`` / ``.npy``, K the box's rank in
its image (0: the best)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .result import Explanation


def file_names(sources: Iterable[str | None]) -> list[str]:
    """One distinct name per image: the file's stem (``image<i>`` for an image not read from a file);
    a stem seen before gets ``-2``, ``-3``... (the same name in two folders)."""
    names: list[str] = []
    seen: set[str] = set()
    for i, src in enumerate(sources):
        base = Path(src).stem if src else f"image{i}"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}-{k}"
        seen.add(name)
        names.append(name)
    return names


def write_explanations(explanations: list["Explanation"], out: str | Path) -> Path:
    """Write each explanation's overlay PNG and map ``.npy`` into folder ``out`` (made if missing) and
    record the paths in its ``files``; returns the folder."""
    from ..data.images import write_png

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder to write the explanations into")
    out.mkdir(parents=True, exist_ok=True)
    # One name per image: an image's boxes come in rank order, box 0 first.
    firsts = [e for e in explanations if not e.box_rank]
    names = iter(file_names(e.source for e in firsts))
    name = ""
    for e in explanations:
        name = next(names) if not e.box_rank else name
        stem = f"{name}.{e.method}" + (f".box{e.box_rank}" if e.box_rank is not None else "")
        png, npy = out / f"{stem}.png", out / f"{stem}.npy"
        write_png(e.overlay, png)
        np.save(npy, e.map.astype(np.float32))
        e.files = {"overlay": str(png), "map": str(npy)}
    return out
