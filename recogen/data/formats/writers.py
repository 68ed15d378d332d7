"""Writing data sets to disk: :func:`convert` between ``coco:`` and ``yolo:`` trees (original image files
copied, never resampled), and :func:`write_coco` / :func:`write_yolo` / :func:`write_masks` for in-memory
:class:`~recogen.data.dense.DenseSet` s."""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path, PurePosixPath

import numpy as np

from ...errors import DataError
from ...utils import atomic_write_text, write_json
from ..dense import DenseSet
from ..images import write_png
from .records import _ALL, _Source


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


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _write_coco_tree(src: _Source, out: Path, where: Path) -> None:
    multi = list(src.splits) != [_ALL]
    for split, recs in src.splits.items():
        items = []
        for r in recs:
            fn = (f"{split}/" if multi else "") + _safe_rel(r.rel, where)
            _copy(r.path, out / "images" / fn)
            items.append((fn, r.size, r.boxes, r.labels, None))
        write_json(out / (f"{split}.json" if multi else "annotations.json"), _coco_json(items, src.classes))


def _write_yolo_tree(src: _Source, out: Path, where: Path) -> None:
    named = {("train" if s == _ALL else s): recs for s, recs in src.splits.items()}
    for split, recs in named.items():
        for r in recs:
            rel = _safe_rel(r.rel, where)
            if rel.startswith(f"{split}/"):  # COCO file_names of split files often start with it already
                rel = rel[len(split) + 1:]
            _copy(r.path, out / "images" / split / rel)
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
    from .. import parse_spec
    from .parsers import _PARSERS

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
        write_png(ds.images[i], root / fn)
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
            write_png(ds.images[i], root / "images" / split / _file_name(i))
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
        write_png(ds.images[i], root / "images" / _file_name(i))
        write_png(ds.masks[i], root / "masks" / _file_name(i))
    atomic_write_text(root / "classes.txt", "".join(f"{n}\n" for n in seg_classes))
    return root


