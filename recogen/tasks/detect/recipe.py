"""The default recipe of detection: image size, model, batch, epochs for the data size, LR, precision."""
from __future__ import annotations

import dataclasses

import torch

from ...config import DetectConfig
from ...data.dense import DenseSplits
from ..runs import resolve_budget
from ..trainer import auto_precision

# Without --image-size, larger data is trained at this size: fcos-s costs grow with the pixel count.
MAX_AUTO_SIZE = 320

# The default policy: the budget (wall clock, re-planned from measured epoch times, tasks/budget.py)
# decides how long to train; the data set an upper bound of this many training images seen at
# 128 px (scaled by pixel count for other sizes): about 4x what fits 8 minutes on the 2-core CPU of
# BENCHMARKS.md, so on such a CPU the clock decides and on a GPU the data do.
DEFAULT_BUDGET = "8m"
_MAX_IMAGE_PASSES_128 = 55_000


def resolve_defaults(cfg: DetectConfig, splits: DenseSplits) -> tuple[DetectConfig, list[str]]:
    """Replace every "auto"/None in ``cfg`` with a choice that fits the data and the hardware.

    From scratch the ResNet-50 and Faster R-CNN detectors are far too slow for a CPU (a step of 16
    images at 128 px took 5-26 s single-threaded on the CPU of BENCHMARKS.md) and SSDlite learns
    slowly, so the default is ``fcos-s``, a small FCOS, trained for the time budget (8 minutes by
    default, re-planned from measured epoch times; see BENCHMARKS.md for the mAP it reaches on
    digit-scenes); ``--pretrained`` picks ``fasterrcnn-mobilenet`` (COCO weights) instead. Larger
    images are trained at 320 px.
    """
    n = len(splits.train)
    why: list[str] = []
    c = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    h = w = splits.image_size[0]
    if c.image_size is None and h > MAX_AUTO_SIZE:
        h = w = MAX_AUTO_SIZE
        why.append(f"image size {h} (data at {splits.image_size[0]} px; --image-size to keep more detail)")
    if c.model == "auto":
        c.model = "fasterrcnn-mobilenet" if c.pretrained else "fcos-s"
        why.append(f"model {c.model} ({'COCO-pretrained' if c.pretrained else 'small, from scratch, fits a CPU'})")
    if c.batch_size is None:
        c.batch_size = max(1, min(16, n))
        why.append(f"batch size {c.batch_size}")
    budget = resolve_budget(c, DEFAULT_BUDGET, why)
    if c.epochs is None:
        # Cost per image grows with its pixel count.
        passes = _MAX_IMAGE_PASSES_128 * (128 * 128) / (h * w)
        c.epochs = int(min(300, max(10, round(passes / max(n, 1)))))
        steps = c.epochs * max(1, n // c.batch_size)
        why.append(f"{'at most ' if budget else ''}{c.epochs} epochs (~{steps} steps of {c.batch_size})")
    if c.lr is None:
        # fcos-s: 4e-3 beat 2e-3 (test mAP .73 vs .71 on shapes:600 at 128 px, 45 epochs, one run each).
        c.lr = 4e-3 if c.model == "fcos-s" else 1e-4 if c.pretrained else 1e-3
        why.append(f"lr {c.lr:g} ({c.optimizer}, {c.schedule})")
    if c.augment == "auto":
        c.augment = "light"
        why.append(f"augment {c.augment}")
    if c.precision == "auto":
        # bf16 autocast made an FCOS training step 13x slower on a CPU (measured on the CPU of
        # BENCHMARKS.md); fp32 unless a GPU.
        c.precision = auto_precision() if torch.cuda.is_available() else "32-true"
        why.append(f"precision {c.precision}")
    if c.channels_last is None:
        c.channels_last = False  # the detectors' transform builds its own batch tensor
    c.image_size, c.channels = h, splits.channels
    return c, why
