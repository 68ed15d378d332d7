"""Detection/segmentation data on disk: COCO JSON, YOLO txt, image + mask folders; conversions.

``coco:PATH``  PATH is a COCO JSON file (images under the JSON's folder or an ``images/`` folder
               beside it), or a folder holding ``train.json`` + ``val.json`` (+ ``test.json``) or
               ``annotations.json``.
``yolo:PATH``  Ultralytics layout: ``PATH/data.yaml``, ``images/<split>/*``, ``labels/<split>/*.txt``.
``masks:PATH`` ``PATH/images/*`` + ``PATH/masks/<same stem>.png`` (class index per pixel, 255 =
               ignore), optional ``PATH/classes.txt``; or the same with ``train/`` ``val/`` subfolders.

Reading has two steps. A *parser* turns the files into one :class:`_Record` per image (path,
on-disk size, validated boxes in on-disk pixels, class indices, what to paint into the semantic
mask) without decoding pixels; every user mistake is caught here as one-line DataError naming the
file. :func:`_load` then decodes each image once, resized to one square training size, into
:class:`~recogen.data.dense.DenseSet` s. :func:`convert` reuses the parsers and copies the original
image files, so a conversion never resamples a pixel.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..utils import atomic_write_text, write_json
from .base import DataOptions
from .dense import IGNORE_INDEX, DENSE_DATASETS, DenseSet, DenseSplits, split_dense
from .folder import IMAGE_EXTENSIONS, _base_mode, _BadImage, _strict_pil, open_verified

EDGE_TOLERANCE = 1.0  # px a box may overshoot the image edge (exporter rounding) before it is an error
MIN_COMPONENT_PIXELS = 4  # smaller connected components of a mask are speckles, not objects
_SPLITS = ("train", "val", "test")
_ALL = "all"  # split name of a pool that has no train/val split on disk


# ----------------------------------------------------------------------------------------------
# Records: what every parser produces
# ----------------------------------------------------------------------------------------------


@dataclass
class _Paint:
    """One thing to paint into a semantic mask: a COCO polygon list / RLE dict or an xyxy box."""

    kind: str  # "poly" | "rle" | "box"
    data: object
    value: int  # pixel value written
    only_background: bool = False  # True: paint only where the mask is still 0 (unknown extents)
    where: str = ""  # for error messages


@dataclass
class _Record:
    path: Path
    rel: str  # path under the split's image root, kept by conversions
    size: tuple[int, int]  # (H, W) on disk
    boxes: np.ndarray  # (K, 4) float64 xyxy, on-disk pixels, validated and clipped
    labels: np.ndarray  # (K,) int64 indices into classes
    paint: list[_Paint] = field(default_factory=list)
    mask_file: Path | None = None  # masks format: the mask PNG itself
    size_from: str | None = None  # annotation file the size came from (checked when decoded)


@dataclass
class _Source:
    name: str
    classes: list[str]
    seg_classes: list[str]
    splits: dict[str, list[_Record]]  # train/val/test as on disk, or {"all": pool}
    has_masks: bool
    notes: list[str] = field(default_factory=list)
    crowd: int = 0  # crowd annotations (ignore regions; conversions cannot carry them)


def _check_box(box, size: tuple[int, int], where: str) -> np.ndarray:
    """Validate an xyxy box against an (H, W) image; clip overshoots up to EDGE_TOLERANCE px."""
    h, w = size
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise DataError(f"{where}: box has a non-finite coordinate; fix or delete the box")
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise DataError(f"{where}: box has width {x1 - x0:g} and height {y1 - y0:g}; both must be positive (fix or delete the box)")
    t = EDGE_TOLERANCE
    if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
        raise DataError(f"{where}: box [{x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}] (xyxy) lies outside the "
                        f"{w}x{h} image; fix the box or the image size")
    out = np.array([min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)])
    if out[2] - out[0] <= 0 or out[3] - out[1] <= 0:
        raise DataError(f"{where}: box [{x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}] lies outside the {w}x{h} image; fix the box")
    return out


def _probe(path: Path, bad: list[Path] | None) -> tuple[int, int] | None:
    """(H, W) from the image header; an unreadable file is a DataError (or skipped into ``bad``)."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Exception as e:
        if bad is None:
            raise DataError(str(_BadImage(path, e))) from None
        bad.append(path)
        return None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not p.name.startswith("."))


def _boxes(rows: list) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


# ----------------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read annotation file {path}: {e.strerror}; check the path") from None
    if not text.strip():
        raise DataError(f"annotation file {path} is empty; export COCO JSON with images, annotations and categories")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"annotation file {path} is not valid JSON (line {e.lineno}: {e.msg}); fix or re-export it") from None
    if not isinstance(data, dict):
        raise DataError(f"annotation file {path} is not a COCO object (expected keys images, annotations, categories)")
    return data


def _coco_categories(data: dict, src: Path) -> tuple[list[int], list[str]]:
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{src} has no categories; add a \"categories\" list of {{\"id\": 1, \"name\": ...}}")
    seen: dict[int, str] = {}
    for c in cats:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise DataError(f"{src}: category {c!r} needs an integer id and a string name")
        if c["id"] in seen:
            raise DataError(f"{src}: category id {c['id']} appears twice; give each category its own id")
        seen[c["id"]] = c["name"]
    ids = sorted(seen)
    names = [seen[i] for i in ids]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{src}: category name(s) {', '.join(dup)} used by several ids; rename or merge them")
    return ids, names


def _coco_segmentation(seg, size: tuple[int, int], where: str) -> _Paint | None:
    """Validate a COCO segmentation (polygons or RLE); None when absent."""
    if seg is None or (isinstance(seg, list) and not seg):
        return None
    h, w = size
    if isinstance(seg, list):
        for poly in seg:
            ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in poly)
            if not ok:
                raise DataError(f"{where}: polygon must be a flat list of at least 3 x,y pairs; fix the segmentation")
        return _Paint("poly", seg, 0, where=where)
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [h, w]:
            raise DataError(f"{where}: RLE mask size {list(seg['size'])} (h, w) differs from the image's [{h}, {w}]; "
                            f"fix the segmentation or the image's height/width")
        counts = seg["counts"]
        if isinstance(counts, list) and (not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w):
            raise DataError(f"{where}: uncompressed RLE counts must be non-negative integers summing to {h}*{w}; fix the segmentation")
        if not isinstance(counts, (list, str, bytes)):
            raise DataError(f"{where}: RLE counts must be a list or a string; fix the segmentation")
        return _Paint("rle", seg, 0, where=where)
    raise DataError(f"{where}: segmentation must be a list of polygons or an RLE dict with counts and size")


def _coco_file(src: Path, bad: list[Path] | None) -> tuple[list[int], list[str], list[_Record], bool, int]:
    """Parse one COCO JSON into records; returns category ids, names, records, has_masks, crowd count."""
    data = _read_json(src)
    cat_ids, names = _coco_categories(data, src)
    index = {cid: i for i, cid in enumerate(cat_ids)}
    images = data.get("images")
    if not isinstance(images, list) or not images:
        raise DataError(f"{src} lists no images; add an \"images\" list with id, file_name, width, height")
    anns = data.get("annotations")
    if not isinstance(anns, list) or not anns:
        raise DataError(f"{src} has no annotations; a detection/segmentation data set needs at least one object")

    roots = (src.parent, src.parent / "images")
    recs: dict[int, _Record] = {}
    for im in images:
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise DataError(f"{src}: image entry {str(im)[:80]} needs an integer id and a file_name")
        if im["id"] in recs:
            raise DataError(f"{src}: image id {im['id']} appears twice; give each image its own id")
        fn = im["file_name"]
        path = next((r / fn for r in roots if (r / fn).is_file()), None)
        if path is None:
            raise DataError(f"{src}: image id {im['id']}: file {fn} is in neither {roots[0]} nor {roots[1]}; "
                            f"place it there or fix file_name")
        if isinstance(im.get("height"), int) and isinstance(im.get("width"), int) and im["height"] > 0 and im["width"] > 0:
            size, size_from = (im["height"], im["width"]), str(src)
        else:
            size, size_from = _probe(path, bad), None
            if size is None:
                continue
        recs[im["id"]] = _Record(path, fn, size, _boxes([]), np.zeros(0, np.int64), size_from=size_from)

    listed = {im["id"] for im in images}
    per_image: dict[int, list] = {i: [] for i in recs}
    has_masks, crowd = False, 0
    for n, a in enumerate(anns):
        aid = a.get("id", f"#{n}") if isinstance(a, dict) else f"#{n}"
        where = f"{src}: annotation id {aid}"
        if not isinstance(a, dict):
            raise DataError(f"{where} is not an object; fix the annotations list")
        if a.get("image_id") not in recs:
            if bad is not None and a.get("image_id") in listed:
                continue  # its image was skipped as unreadable
            raise DataError(f"{where} refers to image_id {a.get('image_id')!r}, which is not in images; fix image_id")
        if a.get("category_id") not in index:
            raise DataError(f"{where} has unknown category_id {a.get('category_id')!r} (known: "
                            f"{', '.join(map(str, cat_ids))}); add the category or fix the annotation")
        rec = recs[a["image_id"]]
        where += f" (image {rec.rel})"
        bb = a.get("bbox")
        if not (isinstance(bb, list) and len(bb) == 4 and all(isinstance(v, (int, float)) for v in bb)):
            raise DataError(f"{where}: bbox must be [x, y, width, height]; fix the annotation")
        x, y, w, h = map(float, bb)
        if w <= 0 or h <= 0:
            raise DataError(f"{where}: bbox {bb} has width {w:g} and height {h:g}; both must be positive (fix or delete it)")
        box = _check_box((x, y, x + w, y + h), rec.size, where)
        seg = _coco_segmentation(a.get("segmentation"), rec.size, where)
        has_masks |= seg is not None
        is_crowd = bool(a.get("iscrowd", 0))
        crowd += is_crowd
        area = float(a["area"]) if isinstance(a.get("area"), (int, float)) else w * h
        per_image[a["image_id"]].append((is_crowd, area, box, index[a["category_id"]], seg))

    for iid, objs in per_image.items():
        rec = recs[iid]
        targets = [o for o in objs if not o[0]]
        rec.boxes = _boxes([o[2] for o in targets])
        rec.labels = np.array([o[3] for o in targets], dtype=np.int64)
        # Larger objects first so smaller ones stay visible on top (as COCO's own semantic exports);
        # objects without a segmentation make their box "unknown" (ignore) where nothing else is known;
        # crowd regions are ignored whatever lies beneath.
        for _, _, box, label, seg in sorted(targets, key=lambda o: -o[1]):
            if seg is not None:
                rec.paint.append(replace(seg, value=label + 1))
        rec.paint += [_Paint("box", box, IGNORE_INDEX, only_background=True) for _, _, box, _, seg in targets if seg is None]
        for _, _, box, _, seg in (o for o in objs if o[0]):
            rec.paint.append(replace(seg, value=IGNORE_INDEX) if seg is not None else _Paint("box", box, IGNORE_INDEX))
    return cat_ids, names, list(recs.values()), has_masks, crowd


def _coco_source(arg: str | None, bad: list[Path] | None = None) -> _Source:
    usage = "use coco:PATH/annotations.json or coco:FOLDER with train.json and val.json"
    if not arg or not arg.strip():
        raise DataError(f"the coco data set needs a path; {usage}")
    p = Path(arg).expanduser()
    if p.is_dir():
        files = {s: p / f"{s}.json" for s in _SPLITS if (p / f"{s}.json").is_file()}
        if not files and (p / "annotations.json").is_file():
            files = {_ALL: p / "annotations.json"}
        if not files:
            raise DataError(f"{p} holds no train.json, val.json or annotations.json; {usage}")
        if _ALL not in files and "train" not in files:
            raise DataError(f"{p} has {', '.join(f.name for f in files.values())} but no train.json; add it")
    elif p.is_file():
        files = {_ALL: p}
    else:
        raise DataError(f"COCO annotation file or folder {p} does not exist; {usage}")

    splits: dict[str, list[_Record]] = {}
    first = None
    has_masks, crowd = False, 0
    for split, f in files.items():
        ids, names, recs, m, c = _coco_file(f, bad)
        if first is None:
            first = (ids, names, f)
        elif (ids, names) != first[:2]:
            raise DataError(f"{f} has other categories than {first[2]}; every split needs the same categories list")
        splits[split] = recs
        has_masks |= m
        crowd += c
    names = first[1]
    src = _Source("coco", names, ["background", *names], splits, has_masks, crowd=crowd)
    if crowd:
        src.notes.append(f"{crowd} crowd annotation(s) are ignore regions, not training targets")
    return src


# ----------------------------------------------------------------------------------------------
# YOLO
# ----------------------------------------------------------------------------------------------


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
    if not arg or not arg.strip():
        raise DataError(f"the yolo data set needs a path; {usage}")
    p = Path(arg).expanduser()
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


# ----------------------------------------------------------------------------------------------
# Image + mask folders
# ----------------------------------------------------------------------------------------------


def _read_mask(path: Path) -> np.ndarray:
    try:
        with open_verified(path) as m:
            m.load()
            mode = m.mode
            arr = np.asarray(m)
    except Exception as e:
        raise DataError(str(_BadImage(path, e)).replace(", or pass --skip-bad-images", "")) from None
    if mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise DataError(f"mask {path} is a {mode} image; save class indices as a single-channel PNG (mode L or P)")
    if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
        raise DataError(f"mask {path} has pixel values outside 0..255; class indices must be 0..254 (255 = ignore)")
    return arr.astype(np.uint8)


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
    if not arg or not arg.strip():
        raise DataError(f"the masks data set needs a path; {usage}")
    root = Path(arg).expanduser()
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
        images = _image_files(idir) if s != _ALL else sorted(
            p for p in idir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith("."))
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


_PARSERS = {"coco": _coco_source, "yolo": _yolo_source, "masks": _masks_source}


# ----------------------------------------------------------------------------------------------
# Decoding into DenseSplits
# ----------------------------------------------------------------------------------------------


def auto_image_size(sizes: list[tuple[int, int]]) -> int:
    """Training size: the median shorter side rounded to a multiple of 32, clamped to 64..640."""
    med = float(np.median([min(s) for s in sizes])) if sizes else 64.0
    return int(min(640, max(64, 32 * round(med / 32))))


def _semantic_mask(rec: _Record) -> np.ndarray:
    """The (H, W) uint8 class map of one record at its on-disk size (pycocotools rasterises COCO shapes)."""
    if rec.mask_file is not None:
        return _read_mask(rec.mask_file)
    h, w = rec.size
    m = np.zeros((h, w), dtype=np.uint8)
    for p in rec.paint:
        if p.kind == "box":
            x0, y0, x1, y1 = p.data
            pix = np.zeros((h, w), dtype=bool)
            pix[int(math.floor(y0)):int(math.ceil(y1)), int(math.floor(x0)):int(math.ceil(x1))] = True
        else:
            pix = _rasterise(p, h, w)
        if p.only_background:
            pix &= m == 0
        m[pix] = p.value
    return m


def _rasterise(p: _Paint, h: int, w: int) -> np.ndarray:
    from pycocotools import mask as cmask

    try:
        if p.kind == "poly":
            rle = cmask.merge(cmask.frPyObjects(p.data, h, w))
        elif isinstance(p.data["counts"], list):
            rle = cmask.frPyObjects(p.data, h, w)
        else:
            counts = p.data["counts"]
            rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        out = cmask.decode(rle).astype(bool)
    except Exception as e:
        raise DataError(f"{p.where}: cannot decode the segmentation ({e}); fix or re-export it") from None
    if out.shape != (h, w):
        raise DataError(f"{p.where}: segmentation decodes to {out.shape[1]}x{out.shape[0]}, not {w}x{h}; fix it")
    return out


def _decode(rec: _Record, size: int, channels: int) -> np.ndarray:
    """Decode one image at (channels, size, size); an on-disk size that disagrees with its annotation is an error."""
    try:
        with open_verified(rec.path) as img:
            hw = (img.height, img.width)
            img.draft(None, (size, size))  # JPEG: decode at a reduced scale that still covers ``size``
            img.load()
            img = _base_mode(img)
    except Exception as e:
        raise _BadImage(rec.path, e) from e
    if hw != rec.size:
        raise DataError(f"image {rec.path} is {hw[1]}x{hw[0]} but {rec.size_from} says {rec.size[1]}x{rec.size[0]}; "
                        f"fix its width/height there")
    arr = np.asarray(img.resize((size, size), Image.BILINEAR).convert("L" if channels == 1 else "RGB"))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _to_set(recs: list[_Record], size: int, channels: int, with_masks: bool, bad: list[Path] | None) -> DenseSet:
    images = np.zeros((len(recs), channels, size, size), dtype=np.uint8)
    masks = np.zeros((len(recs), size, size), dtype=np.uint8) if with_masks else None
    ok = np.ones(len(recs), dtype=bool)
    boxes, labels = [], []
    with _strict_pil():
        for i, r in enumerate(recs):
            try:
                images[i] = _decode(r, size, channels)
            except _BadImage as e:
                if bad is None:
                    raise DataError(str(e)) from None
                bad.append(r.path)
                ok[i] = False
                continue
            h, w = r.size
            scale = np.array([size / w, size / h, size / w, size / h])
            boxes.append(torch.from_numpy((r.boxes * scale).astype(np.float32)).reshape(-1, 4))
            labels.append(torch.from_numpy(r.labels.astype(np.int64)))
            if masks is not None:
                masks[i] = np.asarray(Image.fromarray(_semantic_mask(r)).resize((size, size), Image.NEAREST))
    keep = [r for r, k in zip(recs, ok) if k]
    if not ok.all():
        images = images[ok]
        masks = masks[ok] if masks is not None else None
    return DenseSet(torch.from_numpy(images), boxes, labels, torch.from_numpy(masks) if masks is not None else None,
                    [str(r.path) for r in keep], [r.size for r in keep])


def _load(src: _Source, opts: DataOptions, bad: list[Path] | None) -> DenseSplits:
    if opts.channels not in (None, 1, 3):
        raise DataError(f"cannot load images with {opts.channels} channels; use --channels 1 or 3")
    channels = opts.channels or 3
    size = opts.image_size or auto_image_size([r.size for recs in src.splits.values() for r in recs])
    sets = {s: _to_set(recs, size, channels, src.has_masks, bad) for s, recs in src.splits.items()}
    for s, ds in sets.items():
        if len(ds) == 0:
            raise DataError(f"no readable images in the {s} split of the {src.name} data set; add images")
    if "val" in sets:
        train = sets["train"]
        if opts.limit is not None:
            train = train.subset(np.sort(np.random.default_rng(opts.seed).permutation(len(train))[: opts.limit]))
        out = DenseSplits(src.name, src.classes, src.seg_classes, train, sets["val"], sets.get("test"))
    else:
        pool = sets[_ALL] if _ALL in sets else sets["train"]
        out = split_dense(src.name, src.classes, src.seg_classes, pool,
                          replace(opts, test_fraction=0.0) if "test" in sets else opts)
        out.test = sets.get("test", out.test)
    out.notes += src.notes
    if bad:
        note = f"skipped {len(bad)} unreadable image(s): {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}"
        warnings.warn(note, stacklevel=3)
        out.notes.append(note)
    return out


def _builder(fmt: str):
    def build(arg: str | None, opts: DataOptions) -> DenseSplits:
        bad: list[Path] | None = [] if opts.skip_bad_images else None
        return _load(_PARSERS[fmt](arg, bad), opts, bad)

    build.__name__ = f"{fmt}_dataset"
    build.__doc__ = f"Read a {fmt} data set into memory (see the module docstring for the layout)."
    return build


coco_dataset = DENSE_DATASETS.register(
    "coco", description="COCO JSON: coco:PATH/annotations.json (images beside it or in images/), or coco:FOLDER with train.json/val.json"
)(_builder("coco"))
yolo_dataset = DENSE_DATASETS.register(
    "yolo", description="Ultralytics YOLO layout: yolo:PATH with data.yaml, images/<split>/, labels/<split>/*.txt"
)(_builder("yolo"))
masks_dataset = DENSE_DATASETS.register(
    "masks", description="segmentation folders: masks:PATH with images/* and masks/*.png (class index per pixel, 255 = ignore)"
)(_builder("masks"))


# ----------------------------------------------------------------------------------------------
# Writing and conversion
# ----------------------------------------------------------------------------------------------


def _safe_rel(rel: str, where: Path) -> str:
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise DataError(f"{where}: image path {rel} points outside its image folder; use a relative file_name")
    return p.as_posix()


def _coco_json(items: list[tuple[str, tuple[int, int], np.ndarray, np.ndarray, list]], classes: list[str]) -> dict:
    """COCO dict from (file_name, (H, W), boxes xyxy, labels, segmentations-or-None) per image; category id = index + 1."""
    images, anns = [], []
    for iid, (fn, (h, w), boxes, labels, segs) in enumerate(items, start=1):
        images.append({"id": iid, "file_name": fn, "width": int(w), "height": int(h)})
        for k, (box, label) in enumerate(zip(boxes, labels)):
            x0, y0, x1, y1 = (float(v) for v in box)
            a = {"id": len(anns) + 1, "image_id": iid, "category_id": int(label) + 1,
                 "bbox": [round(x0, 4), round(y0, 4), round(x1 - x0, 4), round(y1 - y0, 4)],
                 "area": round((x1 - x0) * (y1 - y0), 4), "iscrowd": 0}
            if segs and segs[k] is not None:
                a["segmentation"], a["area"] = segs[k]
            anns.append(a)
    return {"images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(classes)]}


def _yolo_lines(boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> str:
    h, w = size
    out = []
    for (x0, y0, x1, y1), c in zip(boxes, labels):
        out.append(f"{int(c)} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
    return "".join(line + "\n" for line in out)


def _data_yaml(splits: list[str], classes: list[str]) -> str:
    import yaml

    lines = [f"train: images/{'train' if 'train' in splits else splits[0]}"]
    if "val" in splits:
        lines.append("val: images/val")
    else:
        lines.append("# no held-out images in the source: val repeats train (recogen then splits train itself)")
        lines.append(f"val: images/{'train' if 'train' in splits else splits[0]}")
    if "test" in splits:
        lines.append("test: images/test")
    lines.append(f"nc: {len(classes)}")
    lines.append(yaml.safe_dump({"names": dict(enumerate(classes))}, sort_keys=True, allow_unicode=True).rstrip())
    return "\n".join(lines) + "\n"


def _write_coco_tree(src: _Source, out: Path, where: Path) -> None:
    multi = list(src.splits) != [_ALL]
    for split, recs in src.splits.items():
        items = []
        for r in recs:
            fn = (f"{split}/" if multi else "") + _safe_rel(r.rel, where)
            dst = out / "images" / fn
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r.path, dst)
            items.append((fn, r.size, r.boxes, r.labels, None))
        write_json(out / (f"{split}.json" if multi else "annotations.json"), _coco_json(items, src.classes))


def _write_yolo_tree(src: _Source, out: Path, where: Path) -> None:
    named = {("train" if s == _ALL else s): recs for s, recs in src.splits.items()}
    for split, recs in named.items():
        for r in recs:
            rel = _safe_rel(r.rel, where)
            if rel.startswith(f"{split}/"):  # COCO file_names of split files often start with it already
                rel = rel[len(split) + 1:]
            dst = out / "images" / split / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r.path, dst)
            lbl = (out / "labels" / split / rel).with_suffix(".txt")
            lbl.parent.mkdir(parents=True, exist_ok=True)
            lbl.write_text(_yolo_lines(r.boxes, r.labels, r.size))
    (out / "data.yaml").write_text(_data_yaml(list(named), src.classes))


def convert(src_spec: str, to: str, out_dir: str | Path) -> Path:
    """Convert a ``coco:PATH`` or ``yolo:PATH`` data set to ``to`` ("coco" or "yolo") in ``out_dir``.

    Boxes and class names are carried over in on-disk pixels and the image files are copied
    unchanged; crowd annotations and segmentations are not carried (YOLO boxes have neither). The
    output is built in a hidden folder beside ``out_dir`` and renamed into place at the end, so a
    failure leaves nothing behind; an existing non-empty ``out_dir`` is refused.

    >>> convert("yolo:data/shapes-yolo", "coco", "data/shapes-coco")  # doctest: +SKIP
    PosixPath('data/shapes-coco')     # readable as coco:data/shapes-coco
    """
    from . import parse_spec

    fmt, arg = parse_spec(src_spec)
    if fmt not in ("coco", "yolo"):
        raise DataError(f"cannot convert from {fmt!r}; the source must be coco:PATH or yolo:PATH")
    if to not in ("coco", "yolo"):
        raise DataError(f"cannot convert to {to!r}; choose coco or yolo")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; choose a new output folder or empty it")
    src = _PARSERS[fmt](arg)
    if src.crowd:
        warnings.warn(f"conversion drops {src.crowd} crowd annotation(s): boxes-only formats cannot mark ignore regions",
                      stacklevel=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        (_write_coco_tree if to == "coco" else _write_yolo_tree)(src, tmp, Path(arg))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # What was written, per split (shown by the CLI; the Python API keeps it in the log).
    n_img = sum(len(recs) for recs in src.splits.values())
    n_obj = sum(len(r.labels) for recs in src.splits.values() for r in recs)
    log = logging.getLogger("recogen.data")
    log.info("converted %d images, %d objects, %d classes", n_img, n_obj, len(src.classes))
    for split, recs in src.splits.items():
        name = "train" if split == _ALL and to == "yolo" else split  # a YOLO tree names its pool train
        log.info("  %-5s %6d images %7d objects", name, len(recs), sum(len(r.labels) for r in recs))
    return out


def _save_png(img: torch.Tensor, path: Path) -> None:
    arr = img.numpy()
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path)


def _file_name(i: int) -> str:
    return f"img_{i:05d}.png"


def write_coco(ds: DenseSet, classes: list[str], out_json: str | Path, image_root: str | Path | None = None,
               *, segmentation: str | None = "rle") -> Path:
    """Write ``ds`` as PNG images plus one COCO JSON; returns the JSON path.

    ``image_root`` defaults to ``images/`` beside the JSON (where ``coco:`` looks); file names are
    relative to it. With ``segmentation="rle"`` and masks present, each object's segmentation is
    the compressed RLE of the pixels of its class (mask value label+1) inside its box, so the
    semantic mask reads back exactly; ignore (255) pixels are not written.
    """
    from pycocotools import mask as cmask

    out_json = Path(out_json)
    root = Path(image_root) if image_root is not None else out_json.parent / "images"
    root.mkdir(parents=True, exist_ok=True)
    h, w = ds.images.shape[-2:]
    items = []
    for i in range(len(ds)):
        fn = _file_name(i)
        _save_png(ds.images[i], root / fn)
        segs = None
        if segmentation == "rle" and ds.masks is not None:
            segs = []
            m = ds.masks[i].numpy()
            for box, label in zip(ds.boxes[i].tolist(), ds.labels[i].tolist()):
                pix = np.zeros((h, w), dtype=np.uint8)
                x0, y0, x1, y1 = int(math.floor(box[0])), int(math.floor(box[1])), int(math.ceil(box[2])), int(math.ceil(box[3]))
                pix[y0:y1, x0:x1] = m[y0:y1, x0:x1] == label + 1
                if not pix.any():
                    segs.append(None)
                    continue
                rle = cmask.encode(np.asfortranarray(pix))
                segs.append(({"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}, int(pix.sum())))
        elif segmentation not in (None, "rle"):
            raise ValueError(f"segmentation must be 'rle' or None, got {segmentation!r}")
        items.append((fn, (h, w), ds.boxes[i].numpy(), ds.labels[i].numpy(), segs))
    write_json(out_json, _coco_json(items, classes))
    return out_json


def write_yolo(splits: dict[str, DenseSet], classes: list[str], root: str | Path) -> Path:
    """Write ``{"train": ds, "val": ds, ...}`` in the Ultralytics layout under ``root``; returns data.yaml."""
    root = Path(root)
    for split, ds in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        size = tuple(ds.images.shape[-2:])
        for i in range(len(ds)):
            _save_png(ds.images[i], root / "images" / split / _file_name(i))
            text = _yolo_lines(ds.boxes[i].numpy().astype(np.float64), ds.labels[i].numpy(), size)
            (root / "labels" / split / _file_name(i)).with_suffix(".txt").write_text(text)
    atomic_write_text(root / "data.yaml", _data_yaml(list(splits), classes))
    return root / "data.yaml"


def write_masks(ds: DenseSet, seg_classes: list[str], root: str | Path) -> Path:
    """Write ``ds`` (with masks) as ``root/images/*.png`` + ``root/masks/*.png`` + ``classes.txt``; returns root."""
    if ds.masks is None:
        raise DataError("this data set has no masks to write; use write_coco or write_yolo for boxes")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(len(ds)):
        _save_png(ds.images[i], root / "images" / _file_name(i))
        Image.fromarray(ds.masks[i].numpy()).save(root / "masks" / _file_name(i))
    atomic_write_text(root / "classes.txt", "".join(f"{n}\n" for n in seg_classes))
    return root


__all__ = ["auto_image_size", "coco_dataset", "convert", "masks_dataset", "write_coco", "write_masks", "write_yolo",
           "yolo_dataset", "EDGE_TOLERANCE", "MIN_COMPONENT_PIXELS"]
