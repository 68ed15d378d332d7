"""``yolo:PATH``: the Ultralytics layout, ``PATH/data.yaml`` + ``images/<split>/*`` + ``labels/<split>/*.txt``
(boxes ``class cx cy w h`` or YOLO-seg polygons ``class x1 y1 x2 y2 ...``, normalised to 0..1)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..dense import IGNORE_INDEX
from ..folder import IMAGE_EXTENSIONS
from .records import _ALL, _SPLITS, _boxes, _check_box, _image_files, _Paint, _probe, _Record, _Source, _spec_path


def _yolo_names(data: dict, src: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{src}: names keys must be class indices 0..N-1") from None
        if keys != list(range(len(keys))):
            raise DataError(f"{src}: names keys {keys} are not 0..{len(keys) - 1}; number the classes from 0 without gaps")
        names = [str(names[k] if k in names else names[str(k)]) for k in keys]
    if not isinstance(names, list) or not names:
        raise DataError(f"{src} has no names; add 'names: [cat, dog]' or 'names: {{0: cat, 1: dog}}'")
    names = [str(n) for n in names]
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"{src}: nc is {data['nc']} but names lists {len(names)} classes; make them agree")
    return names


def _label_path(img: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` in the path becomes ``/labels/``, the suffix ``.txt``."""
    s = str(img)
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if a in s:
        head, tail = s.rsplit(a, 1)
        s = head + b + tail
    return Path(s).with_suffix(".txt")


def _yolo_split_images(entry, root: Path, yaml_dir: Path, src: Path, split: str) -> list[tuple[Path, str]]:
    """Image files of one split entry (a folder, a .txt list, an image, or a list of these)."""
    out: list[tuple[Path, str]] = []
    for e in map(str, entry if isinstance(entry, list) else [entry]):
        cands = [Path(e) if Path(e).is_absolute() else root / e, yaml_dir / e]
        p = next((c for c in cands if c.exists()), None)
        if p is None:
            raise DataError(f"{src}: {split}: {e} exists neither under {root} nor under {yaml_dir}; fix the path")
        if p.is_dir():
            out += [(f, f.relative_to(p).as_posix()) for f in _image_files(p)]
        elif p.suffix.lower() == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    f = Path(line.strip())
                    f = f if f.is_absolute() else (p.parent / f)
                    if not f.is_file():
                        raise DataError(f"{p}: listed image {line.strip()} does not exist; fix the list")
                    out.append((f, f.name))
        else:
            out.append((p, p.name))
    return out


def _yolo_labels(lbl: Path, size: tuple[int, int], names: list[str], rec: _Record) -> bool:
    """Read one label file into ``rec``; returns True when it held polygons (YOLO-seg)."""
    h, w = size
    boxes, labels, polys = [], [], False
    for ln, line in enumerate(lbl.read_text().splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        where = f"{lbl}: line {ln}"
        try:
            vals = [float(v) for v in s.split()]
        except ValueError:
            vals = []
        n = len(vals)
        if not (n == 5 or (n >= 7 and n % 2 == 1)) or not vals[0].is_integer() or not all(map(math.isfinite, vals)):
            raise DataError(f"{where}: malformed label line {s[:60]!r}; expected 'class cx cy w h' "
                            f"(numbers normalised to 0..1) or 'class x1 y1 x2 y2 ...' for polygons")
        c = int(vals[0])
        if not 0 <= c < len(names):
            raise DataError(f"{where}: class {c} but data.yaml lists {len(names)} names (0..{len(names) - 1}); "
                            f"fix the class index or add the name")
        if n == 5:
            cx, cy, bw, bh = vals[1:]
            if bw <= 0 or bh <= 0:
                raise DataError(f"{where}: box has width {bw:g} and height {bh:g}; both must be positive (fix or delete it)")
            box = _check_box(((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h), size, where)
            rec.paint.append(_Paint("box", box, IGNORE_INDEX, only_background=True))
        else:
            xy = np.asarray(vals[1:]).reshape(-1, 2) * (w, h)
            box = _check_box((*xy.min(0), *xy.max(0)), size, where)
            rec.paint.append(_Paint("poly", [xy.ravel().tolist()], c + 1, where=where))
            polys = True
        boxes.append(box)
        labels.append(c)
    rec.boxes, rec.labels = _boxes(boxes), np.array(labels, dtype=np.int64)
    return polys


def _yolo_source(arg: str | None, bad: list[Path] | None = None) -> _Source:
    import yaml

    usage = "use yolo:PATH with PATH/data.yaml, images/<split>/ and labels/<split>/"
    p = _spec_path("yolo", arg, usage)
    src = p if p.is_file() else next((p / n for n in ("data.yaml", "data.yml") if (p / n).is_file()), p / "data.yaml")
    if not src.is_file():
        raise DataError(f"{src} does not exist; {usage}")
    try:
        data = yaml.safe_load(src.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"{src} is not valid YAML ({' '.join(str(e).split())[:120]}); fix it") from None
    if not isinstance(data, dict):
        raise DataError(f"{src} is empty or not a mapping; it needs train:, val: and names:")
    names = _yolo_names(data, src)
    root = src.parent / str(data["path"]) if data.get("path") else src.parent
    if "train" not in data:
        raise DataError(f"{src} has no train: entry; add 'train: images/train'")

    files = {s: _yolo_split_images(data[s], root, src.parent, src, s) for s in _SPLITS if data.get(s)}
    # Ultralytics needs a val entry; data sets without held-out images point it at train.
    if "val" in files and {f for f, _ in files["val"]} == {f for f, _ in files["train"]}:
        del files["val"]
    splits: dict[str, list[_Record]] = {}
    has_masks = False
    for s, items in files.items():
        if not items:
            raise DataError(f"{src}: the {s} split has no images ({' '.join(IMAGE_EXTENSIONS)}); add images or fix the path")
        recs = []
        for f, rel in items:
            size = _probe(f, bad)
            if size is None:
                continue
            rec = _Record(f, rel, size, _boxes([]), np.zeros(0, np.int64))
            lbl = _label_path(f)
            if lbl.is_file():  # no label file: an image without objects (valid in YOLO)
                has_masks |= _yolo_labels(lbl, size, names, rec)
            recs.append(rec)
        splits[s if "val" in files else (_ALL if s == "train" else s)] = recs
    if not any(len(r.labels) for recs in splits.values() for r in recs):
        raise DataError(f"no objects in any label file of {src}; add labels/<split>/*.txt next to images/<split>/")
    return _Source("yolo", names, ["background", *names], splits, has_masks)
