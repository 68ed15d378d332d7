"""``coco:PATH``: one COCO JSON file, or a folder with train.json + val.json (+ test.json) or annotations.json."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..dense import IGNORE_INDEX
from .records import _ALL, _SPLITS, _boxes, _check_box, _Paint, _probe, _Record, _Source, _spec_path


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
    p = _spec_path("coco", arg, usage)
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
