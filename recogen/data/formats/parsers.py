"""The readers of each on-disk format, by name: a parser turns the files into one record per image."""
from __future__ import annotations

from .coco import _coco_source
from .masks import _masks_source
from .yolo import _yolo_source

_PARSERS = {"coco": _coco_source, "yolo": _yolo_source, "masks": _masks_source}
