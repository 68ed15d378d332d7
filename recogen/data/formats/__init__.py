"""Detection/segmentation data on disk: COCO JSON, YOLO txt, image + mask folders; conversions.

``coco:PATH``  PATH is a COCO JSON file (images under the JSON's folder or an ``images/`` folder
               beside it), or a folder holding ``train.json`` + ``val.json`` (+ ``test.json``) or
               ``annotations.json``.
``yolo:PATH``  Ultralytics layout: ``PATH/data.yaml``, ``images/<split>/*``, ``labels/<split>/*.txt``.
``masks:PATH`` ``PATH/images/*`` + ``PATH/masks/<same stem>.png`` (class index per pixel, 255 =
               ignore), optional ``PATH/classes.txt``; or the same with ``train/`` ``val/`` subfolders.

Reading has two steps. A *parser* turns the files into one :class:`~.records._Record` per image (path,
on-disk size, validated boxes in on-disk pixels, class indices, what to paint into the semantic
mask) without decoding pixels; every user mistake is caught here as one-line DataError naming the
file. :func:`~.load._load` then decodes each image once, resized to one square training size, into
:class:`~recogen.data.dense.DenseSet` s. :func:`convert` reuses the parsers and copies the original
image files, so a conversion never resamples a pixel.

Modules: :mod:`.records` (the record types and the checks parsers share), :mod:`.coco`, :mod:`.yolo` and
:mod:`.masks` (one parser each), :mod:`.load` (decoding into DenseSplits) and :mod:`.writers` (conversion
and the writers).
"""
from __future__ import annotations

from pathlib import Path

from ..base import DataOptions
from ..dense import DENSE_DATASETS, DenseSplits
from .load import _load, auto_image_size
from .parsers import _PARSERS
from .records import EDGE_TOLERANCE, MIN_COMPONENT_PIXELS
from .writers import convert, write_coco, write_masks, write_yolo


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

__all__ = ["auto_image_size", "coco_dataset", "convert", "masks_dataset", "write_coco", "write_masks", "write_yolo",
           "yolo_dataset", "EDGE_TOLERANCE", "MIN_COMPONENT_PIXELS"]
