"""``masks:PATH``: ``PATH/images/*`` + ``PATH/masks/<same stem>.png`` (class index per pixel, 255 = ignore),
optional ``PATH/classes.txt``; or the same with ``train/`` ``val/`` subfolders. Boxes are the connected
components of each class in the mask."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from ...errors import DataError
from ..dense import IGNORE_INDEX
from ..folder import IMAGE_EXTENSIONS
from .records import (MIN_COMPONENT_PIXELS, _ALL, _SPLITS, _boxes, _image_files, _probe, _read_mask, _Record, _Source,
                      _spec_path)


def _mask_components(mask: np.ndarray) -> tuple[list, list]:
    """One box per connected component (8-connected) of each class value, in pixel-edge xyxy."""
    from scipy import ndimage

    boxes, values = [], []
    for v in np.unique(mask):
        if v == IGNORE_INDEX:
            continue
        comp, n = ndimage.label(mask == v, structure=np.ones((3, 3)))
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        for k, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is not None and sizes[k] >= MIN_COMPONENT_PIXELS:
                boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
                values.append(int(v))
    return boxes, values


def _masks_source(arg: str | None, bad: list[Path] | None = None) -> _Source:
    usage = "use masks:PATH with PATH/images/* and PATH/masks/<same name>.png"
    root = _spec_path("masks", arg, usage)
    if not (root / "images").is_dir() or not (root / "masks").is_dir():
        raise DataError(f"{root} needs images/ and masks/ folders; {usage}")
    sub = [s for s in _SPLITS if (root / "images" / s).is_dir()]
    dirs = {s: (root / "images" / s, root / "masks" / s) for s in sub} or {_ALL: (root / "images", root / "masks")}
    if sub and "train" not in sub:
        raise DataError(f"{root / 'images'} has {', '.join(sub)}/ but no train/; add images/train and masks/train")

    names: list[str] | None = None
    ctext = root / "classes.txt"
    if ctext.is_file():
        lines = ctext.read_text().splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        for i, n in enumerate(lines, 1):
            if not n.strip():
                raise DataError(f"{ctext}: line {i} is empty; put one class name per line (line i = pixel value i-1)")
        names = [n.strip() for n in lines]
        if not names:
            raise DataError(f"{ctext} is empty; list one class name per line or delete the file")

    splits: dict[str, list[_Record]] = {}
    comps: dict[int, list] = {}  # id(record) -> pixel values of its boxes
    top = -1
    for s, (idir, mdir) in dirs.items():
        images = _image_files(idir, recursive=s != _ALL)
        if not images:
            raise DataError(f"{idir} holds no images ({' '.join(IMAGE_EXTENSIONS)}); {usage}")
        recs = []
        seen: dict[str, Path] = {}
        for f in images:
            rel = f.relative_to(idir).as_posix()
            stem = str(PurePosixPath(rel).with_suffix(""))
            if stem in seen:
                raise DataError(f"{seen[stem]} and {f} share the name {stem}; each image needs its own mask name")
            seen[stem] = f
            mfile = mdir / f"{stem}.png"
            if not mfile.is_file():
                raise DataError(f"image {f} has no mask {mfile}; add the mask PNG (same name) or remove the image")
            size = _probe(f, bad)
            if size is None:
                continue
            m = _read_mask(mfile)
            if m.shape != size:
                raise DataError(f"mask {mfile} is {m.shape[1]}x{m.shape[0]} but image {f} is {size[1]}x{size[0]}; "
                                f"masks must have their image's size")
            vals = m[m != IGNORE_INDEX]
            hi = int(vals.max()) if vals.size else -1
            if names is not None and hi >= len(names):
                raise DataError(f"mask {mfile} has class index {hi} but {ctext} lists {len(names)} classes; "
                                f"fix the mask or add names")
            top = max(top, hi)
            boxes, values = _mask_components(m)
            rec = _Record(f, rel, size, _boxes(boxes), np.zeros(0, np.int64), mask_file=mfile)
            comps[id(rec)] = values
            recs.append(rec)
        pngs = mdir.glob("*.png") if s == _ALL else mdir.rglob("*.png")
        extra = sorted(set(p.relative_to(mdir).with_suffix("").as_posix() for p in pngs) - set(seen))
        if extra:
            raise DataError(f"mask {mdir / extra[0]}.png has no image in {idir}; add the image or remove the mask")
        splits[s] = recs
    if names is None:
        # Without classes.txt index 0 is taken as background (the usual convention): naming it
        # class0 would make every image's background an object for detection.
        names = ["background", *(f"class{i}" for i in range(1, max(top, 1) + 1))]
    offset = 1 if names[0].lower() == "background" else 0
    for recs in splits.values():
        for r in recs:
            values = np.array(comps[id(r)], dtype=np.int64)
            keep = values >= offset
            r.boxes, r.labels = r.boxes[keep], values[keep] - offset
    src = _Source("masks", names[offset:], names, splits, True)
    if not ctext.is_file():
        src.notes.append(f"no {ctext.name}: classes named {names[0]}, {names[1]}, ...; add classes.txt to name them")
    return src
