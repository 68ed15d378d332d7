"""``--data hf:NAME[:CONFIG][?OPTIONS]``: Hugging Face ``datasets`` image sets, through the library's cache.

NAME is a Hub id (``cifar10``, ``cppe-5``, ``owner/name``), a folder saved with ``save_to_disk``, or a
folder ``datasets.load_dataset`` reads (e.g. one made by ``hf download NAME --repo-type dataset
--local-dir DIR``). CONFIG picks a configuration of a Hub set. One registry entry serves each task kind:

* classify/generate (:data:`~recogen.data.DATASETS`): the columns are found by feature type, an
  ``Image`` column and a ``ClassLabel`` column (its names are the classes);
* detect (:data:`~recogen.data.dense.DENSE_DATASETS`): an ``Image`` column and an objects column as in
  the Hub's COCO-style detection sets (cppe-5, detection-datasets/*): per image a list of ``bbox`` and a
  ``ClassLabel`` category. Boxes are read as COCO ``[x, y, width, height]`` in pixels (``bbox=xyxy`` for
  sets that store corners); a few invalid ones (outside the image, no area) are left out with a note.

OPTIONS, after ``?``, comma- or ``&``-separated ``key=value``: ``image=COL``, ``label=COL`` (when a set has
several such columns: the error lists them), ``objects=COL``, ``category=FIELD``, ``bbox=xywh|xyxy``,
``hflip=no`` (digits, letters: a mirror image is another symbol), ``train=SPLIT``, ``val=SPLIT``,
``test=SPLIT`` (the set's split names; by default train, validation/valid/val/dev and test).
Splits: the set's own train/validation/test when present; otherwise split as folder sets are (seeded,
stratified; a given test split is kept). Offline and not cached fails at once, naming the set and the
command that fetches it (:func:`recogen.hub.require_cached`).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..hub import is_repo_id, libraries_offline, looks_like_path, require_dataset
from . import DATASETS
from .base import DataOptions, ImageSet, ImageSplits, finish_splits
from .dense import DENSE_DATASETS, DenseSet, DenseSplits, split_dense
from .folder import _auto_size, _base_mode, _is_single_channel, _strict_pil

USAGE = "use hf:NAME[:CONFIG] (a Hub id), hf:DIR (save_to_disk or a downloaded folder), options after ?, e.g. hf:cifar100?label=fine_label"
OPTIONS = ("image", "label", "objects", "category", "bbox", "hflip", "train", "val", "test")
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}


@dataclass(frozen=True)
class HFSpec:
    """A parsed ``hf:`` argument: the set (Hub id or folder), its configuration and the options."""

    name: str
    config: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_hf_spec(arg: str | None) -> HFSpec:
    """``"cppe-5?bbox=xywh"`` -> HFSpec("cppe-5", None, {"bbox": "xywh"}); unknown options are a DataError."""
    if not arg or not arg.strip():
        raise DataError(f"the hf data set needs a name; {USAGE}")
    body, _, query = arg.partition("?")
    opts: dict[str, str] = {}
    for part in filter(None, query.replace("&", ",").split(",")):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in OPTIONS:
            raise DataError(f"bad hf data option {part!r}; options are {', '.join(k + '=...' for k in OPTIONS)}")
        opts[key.strip()] = value.strip()
    if opts.get("bbox", "xywh") not in ("xywh", "xyxy"):
        raise DataError(f"bbox={opts['bbox']} is not a box format; use bbox=xywh (COCO) or bbox=xyxy")
    # A local folder keeps its colons; a Hub id may carry ":CONFIG".
    if Path(body).expanduser().exists() or looks_like_path(body):
        return HFSpec(body, None, opts)
    name, _, config = body.partition(":")
    return HFSpec(name, config or None, opts)


def load_hf(spec: HFSpec):
    """The ``datasets.DatasetDict`` of ``spec`` (a single Dataset becomes its ``train`` split)."""
    path = Path(spec.name).expanduser()
    local_only = False
    if not path.exists():
        if looks_like_path(spec.name) or not is_repo_id(spec.name):
            raise DataError(f"hf:{spec.name}: no such folder, and not a Hub id (owner/name); {USAGE}")
        local_only = require_dataset(spec.name)
    import datasets  # before libraries_offline: datasets reads the offline flag when first imported

    try:
        if path.exists():
            saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
            ds = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path), spec.config)
        else:
            with libraries_offline(local_only):
                ds = datasets.load_dataset(spec.name, spec.config)
    except Exception as e:  # DatasetNotFoundError, ConnectionError, a bad CONFIG (ValueError)...
        raise DataError(f"cannot load hf:{spec.name}{':' + spec.config if spec.config else ''} "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:240]})") from None
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})
    if not isinstance(ds, datasets.DatasetDict):
        raise DataError(f"hf:{spec.name} is a {type(ds).__name__}, not a data set with splits; {USAGE}")
    return ds


def _splits(ds, spec: HFSpec) -> dict[str, Any]:
    """Our split name -> the set's split: the options' names, else the usual ones; train must exist."""
    found: dict[str, Any] = {}
    for ours, names in SPLIT_NAMES.items():
        given = spec.options.get(ours)
        if given is not None and given not in ds:
            raise DataError(f"hf:{spec.name} has no split {given!r} ({ours}={given}); its splits: {', '.join(ds)}")
        name = given or next((n for n in names if n in ds), None)
        if name is not None:
            found[ours] = ds[name]
    if "train" not in found:
        if len(ds) != 1:
            raise DataError(f"hf:{spec.name} has no train split (its splits: {', '.join(ds)}); "
                            f"name one with ?train=SPLIT")
        found["train"] = next(iter(ds.values()))
    return found


def _pick(spec: HFSpec, features, key: str, kind: str, match) -> str:
    """The column of ``kind`` (by feature type), or the one the option ``key`` names."""
    cols = [c for c, f in features.items() if match(f)]
    given = spec.options.get(key)
    if given is not None:
        if given not in features:
            raise DataError(f"hf:{spec.name} has no column {given!r} ({key}={given}); its columns: {', '.join(features)}")
        return given
    if len(cols) == 1:
        return cols[0]
    if not cols:
        raise DataError(f"hf:{spec.name} has no {kind} column (columns: "
                        f"{', '.join(f'{c} ({type(f).__name__})' for c, f in features.items())})")
    raise DataError(f"hf:{spec.name} has several {kind} columns ({', '.join(cols)}); pick one with ?{key}=COLUMN")


def _image_column(spec: HFSpec, features) -> str:
    from datasets import Image as ImageFeature

    return _pick(spec, features, "image", "image (Image feature)", lambda f: isinstance(f, ImageFeature))


def _raw(split, column: str) -> list[dict[str, Any]]:
    """The encoded images of ``column`` ({"bytes", "path"}), undecoded: recogen decodes each once, resized."""
    from datasets import Image as ImageFeature

    return list(split.cast_column(column, ImageFeature(decode=False))[column])


def _open(item: dict[str, Any], where: str, verify: bool = False) -> Image.Image:
    """The image of one ``{"bytes", "path"}`` item; ``verify``: check a PNG's chunk CRCs first (as folders do)."""
    try:
        data = item.get("bytes") or Path(item["path"]).read_bytes()
        img = Image.open(io.BytesIO(data))
        if verify and img.format == "PNG":
            img.verify()  # consumes the image: open it again to decode
            img = Image.open(io.BytesIO(data))
        return img
    except Exception as e:
        raise DataError(f"{where}: unreadable image ({type(e).__name__}: {str(e)[:80]})") from None


def _probe(items: list[dict[str, Any]], where: str) -> tuple[list[bool], list[tuple[int, int]]]:
    """Per image: single-channel?, (H, W), read from the headers only."""
    single, sizes = [], []
    for i, item in enumerate(items):
        with _open(item, f"{where} row {i}") as img:
            single.append(_is_single_channel(img))
            sizes.append((img.height, img.width))
    return single, sizes


def _decode(items: list[dict[str, Any]], size: int, channels: int, where: str) -> torch.Tensor:
    """All images as uint8 (N, channels, size, size)."""
    out = np.empty((len(items), channels, size, size), dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"
    with _strict_pil():
        for i, item in enumerate(items):
            try:
                with _open(item, f"{where} row {i}", verify=True) as img:
                    img.draft(None, (size, size))  # JPEG: decode at a reduced scale that still covers size
                    img = _base_mode(img).resize((size, size), Image.BILINEAR).convert(mode)
            except DataError:
                raise
            except Exception as e:
                raise DataError(f"{where} row {i}: unreadable image ({type(e).__name__}: {str(e)[:80]})") from None
            arr = np.asarray(img)
            out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(out)


def _hflip(spec: HFSpec) -> bool:
    return spec.options.get("hflip", "yes").lower() not in ("no", "false", "0", "off")


# ------------------------------------------------------------------------------------ classification
@DATASETS.register("hf", description="a Hugging Face datasets image set: hf:NAME[:CONFIG] (Hub, through its cache) "
                                     "or hf:DIR (save_to_disk); Image + ClassLabel columns")
def hf_images(arg: str | None, opts: DataOptions) -> ImageSplits:
    """Load an image-classification set from the Hub or disk (see the module docstring)."""
    from datasets import ClassLabel

    spec = parse_hf_spec(arg)
    ds = load_hf(spec)
    parts = _splits(ds, spec)
    features = parts["train"].features
    img_col = _image_column(spec, features)
    lab_col = _pick(spec, features, "label", "label (ClassLabel feature)", lambda f: isinstance(f, ClassLabel))
    if not isinstance(features[lab_col], ClassLabel):
        raise DataError(f"hf:{spec.name}: column {lab_col!r} is a {type(features[lab_col]).__name__}, not a ClassLabel; "
                        f"pick the class column with ?label=COLUMN")
    classes = list(features[lab_col].names)
    notes: list[str] = []
    raw: dict[str, tuple[list[dict[str, Any]], np.ndarray]] = {}
    for ours, split in parts.items():
        labels = np.asarray(split[lab_col], dtype=np.int64)
        keep = np.flatnonzero(labels >= 0)  # -1: unlabelled (e.g. a competition's hidden test labels)
        if len(keep) < len(labels):
            notes.append(f"{ours}: {len(labels) - len(keep)} unlabelled image(s) left out")
        if len(keep) == 0:
            if ours == "train":
                raise DataError(f"hf:{spec.name}: the train split has no labelled images")
            continue
        split = split.select(keep) if len(keep) < len(labels) else split
        raw[ours] = (_raw(split, img_col), labels[keep])
    where = f"hf:{spec.name}"
    if opts.channels not in (None, 1, 3):
        raise DataError(f"cannot load images with {opts.channels} channels; use --channels 1 or 3")
    channels, size = opts.channels, opts.image_size
    if channels is None or size is None:
        single, sizes = _probe([x for items, _ in raw.values() for x in items], where)
        channels = channels or (1 if all(single) else 3)
        size = size or _auto_size([min(s) for s in sizes])
    sets = {s: ImageSet(_decode(items, size, channels, f"{where} {s}"), torch.from_numpy(y)) for s, (items, y) in raw.items()}
    name = f"hf:{spec.name}"
    if "val" in sets:
        train = sets["train"]
        if opts.limit is not None:  # the same rule as finish_splits: a seeded choice among the training images
            train = train.subset(np.sort(np.random.default_rng(opts.seed).permutation(len(train))[: opts.limit]))
        splits = ImageSplits(name, classes, train, sets["val"], sets.get("test"), hflip_ok=_hflip(spec))
    else:
        splits = finish_splits(name, classes, sets["train"].images, sets["train"].labels, opts,
                               test=sets.get("test"), hflip_ok=_hflip(spec))
    splits.notes += notes
    return splits


# ------------------------------------------------------------------------------------------ detection
def _objects(spec: HFSpec, features) -> tuple[str, str, str, list[str] | None]:
    """(objects column, its box field, its category field, class names or None for plain integers)."""
    from datasets import ClassLabel, LargeList, List, Sequence

    def fields(f) -> dict[str, Any]:
        """The per-object fields of a column: {name: feature of one object's value}."""
        inner = f.feature if isinstance(f, (List, LargeList, Sequence)) else f
        if not isinstance(inner, dict):
            return {}
        return {k: (v.feature if f is inner and isinstance(v, (List, LargeList, Sequence)) else v) for k, v in inner.items()}

    col = _pick(spec, features, "objects", "objects (per-image boxes with a bbox field)", lambda f: "bbox" in fields(f))
    per = fields(features[col])
    if "bbox" not in per:
        raise DataError(f"hf:{spec.name}: column {col!r} has no bbox field (its fields: {', '.join(per) or 'none'})")
    given = spec.options.get("category")
    labels = [k for k, v in per.items() if isinstance(v, ClassLabel)]
    cat = given or (labels[0] if len(labels) == 1 else next((k for k in ("category", "label", "category_id") if k in per), None))
    if cat is None or cat not in per:
        raise DataError(f"hf:{spec.name}: cannot tell the class field of {col!r} (fields: {', '.join(per)}); "
                        f"name it with ?category=FIELD")
    return col, "bbox", cat, (list(per[cat].names) if isinstance(per[cat], ClassLabel) else None)


def _rows(value: Any) -> list[dict[str, Any]]:
    """One image's objects as a list of dicts, whether stored as a dict of lists or a list of dicts."""
    if isinstance(value, dict):
        keys = list(value)
        return [dict(zip(keys, vals)) for vals in zip(*(value[k] for k in keys))]
    return list(value or [])


BAD_BOX_SHARE = 0.05  # more invalid boxes than this share of a split: the box format is wrong, not a few boxes


def _dense_set(split, img_col: str, col: str, cat: str, xyxy: bool, size: int, channels: int, where: str,
               notes: list[str]) -> DenseSet:
    """One split's images at ``size`` with their boxes (xyxy, scaled to ``size``) and class indices.

    Published Hub sets hold a few boxes that leave the image or have no area (cppe-5 does), which their
    users cannot fix: up to :data:`BAD_BOX_SHARE` of them are left out with a note naming the first; more
    is an error (with the box format hint: corners read as widths break most boxes)."""
    from .formats.records import _check_box

    items = _raw(split, img_col)
    _, sizes = _probe(items, where)
    boxes, labels, bad, total = [], [], [], 0
    for i, (objs, (h, w)) in enumerate(zip(split[col], sizes)):
        xy, ys = [], []
        for k, o in enumerate(_rows(objs)):
            total += 1
            x0, y0, a, b = (float(v) for v in o["bbox"])
            try:
                xy.append(_check_box((x0, y0, a, b) if xyxy else (x0, y0, x0 + a, y0 + b), (h, w), f"{where} row {i} object {k}"))
                ys.append(int(o[cat]))
            except DataError as e:
                bad.append(str(e))
        scale = np.array([size / w, size / h, size / w, size / h])
        boxes.append(torch.from_numpy((np.asarray(xy, dtype=np.float64).reshape(-1, 4) * scale).astype(np.float32)))
        labels.append(torch.as_tensor(ys, dtype=torch.long))
    if len(bad) > BAD_BOX_SHARE * total:
        hint = "" if xyxy else " (boxes are read as COCO [x, y, width, height]; for corners add ?bbox=xyxy)"
        raise DataError(f"{len(bad)} of {total} boxes are invalid, e.g. {bad[0]}{hint}")
    if bad:
        notes.append(f"{where}: left out {len(bad)} invalid box(es) of {total}, e.g. {bad[0]}")
    return DenseSet(_decode(items, size, channels, where), boxes, labels, None, None, sizes)


@DENSE_DATASETS.register("hf", description="a Hugging Face datasets detection set: hf:NAME[:CONFIG] or hf:DIR with an "
                                           "objects column (bbox + category), as cppe-5")
def hf_objects(arg: str | None, opts: DataOptions) -> DenseSplits:
    """Load a COCO-style detection set from the Hub or disk (see the module docstring); boxes only, no masks."""
    from .formats.load import auto_image_size

    spec = parse_hf_spec(arg)
    ds = load_hf(spec)
    parts = _splits(ds, spec)
    features = parts["train"].features
    img_col = _image_column(spec, features)
    col, _, cat, classes = _objects(spec, features)
    if classes is None:  # plain integer categories: name them by number
        top = max((int(c) for s in parts.values() for objs in s[col] for c in (o[cat] for o in _rows(objs))), default=0)
        classes = [str(c) for c in range(top + 1)]
    if opts.channels not in (None, 1, 3):
        raise DataError(f"cannot load images with {opts.channels} channels; use --channels 1 or 3")
    where = f"hf:{spec.name}"
    size = opts.image_size or auto_image_size(_probe(_raw(parts["train"], img_col), where)[1])
    xyxy = spec.options.get("bbox") == "xyxy"
    notes: list[str] = []
    sets = {s: _dense_set(split, img_col, col, cat, xyxy, size, opts.channels or 3, f"{where} {s}", notes)
            for s, split in parts.items()}
    name, seg = f"hf:{spec.name}", ["background", *classes]
    if "val" in sets:
        train = sets["train"]
        if opts.limit is not None:
            train = train.subset(np.sort(np.random.default_rng(opts.seed).permutation(len(train))[: opts.limit]))
        out = DenseSplits(name, classes, seg, train, sets["val"], sets.get("test"), hflip_ok=_hflip(spec))
    else:
        out = split_dense(name, classes, seg, sets["train"], replace(opts, test_fraction=0.0) if "test" in sets else opts)
        out.test = sets.get("test", out.test)
        out.hflip_ok = _hflip(spec)
    out.notes += notes
    return out
