"""Writing explanations: ``NAME.METHOD.png`` (the overlay, at the image's own size) and ``NAME.METHOD.npy``
(the float32 map in [0, 1] at the model's input size) per image, NAME the image file's stem."""
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
    for e, name in zip(explanations, file_names(e.source for e in explanations)):
        png, npy = out / f"{name}.{e.method}.png", out / f"{name}.{e.method}.npy"
        write_png(e.overlay, png)
        np.save(npy, e.map.astype(np.float32))
        e.files = {"overlay": str(png), "map": str(npy)}
    return out
