"""Detection evaluation: COCO metrics of a model on a split, written with the PR curves and a mosaic of
predicted and true boxes."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data.dense import DenseSet
from ..skeleton import write_metrics
from .outputs import EVAL_SCORE_THRESH, PREDICT_DEFAULTS, detect_batch, keep_detections, nms_iou, postprocess

MOSAIC_IMAGES = 16


def fit_to_size(ds: DenseSet, size: int) -> DenseSet:
    """The split at the model's input size and 3 channels (boxes and masks scaled with the images)."""
    from ...data.base import convert_channels, resize_images

    h, w = ds.images.shape[-2:]
    images = convert_channels(resize_images(ds.images, size), 3)
    if (h, w) == (size, size):
        return dataclasses.replace(ds, images=images)
    scale = torch.tensor([size / w, size / h, size / w, size / h])
    masks = None
    if ds.masks is not None:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2.functional import resize

        masks = resize(ds.masks, [size, size], interpolation=InterpolationMode.NEAREST)
    return dataclasses.replace(ds, images=images, boxes=[b * scale for b in ds.boxes], masks=masks)


def evaluate_model(model: nn.Module, card: dict[str, Any], ds: DenseSet, run: Path | None, split: str,
                   data: str, has_test: bool | None = None) -> dict[str, Any]:
    """COCO metrics of ``model`` on ``ds``; written (``metrics*.json``, ``pr_curve.png``,
    ``predictions.png``) into ``run`` unless it is None."""
    from ...metrics.detection import MAX_DETECTIONS, detection_metrics
    from ...metrics.heldout import split_fields

    ds = fit_to_size(ds, card["image_size"])
    with postprocess(model.eval(), EVAL_SCORE_THRESH, max_det=MAX_DETECTIONS):
        preds = detect_batch(model, ds.images)
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(ds.boxes, ds.labels)]
    m = detection_metrics(preds, targets, card["classes"])
    metrics = {"task": "detect", "data": data, **split_fields(split, data, has_test=has_test), "num_images": len(ds),
               "num_boxes": sum(len(b) for b in ds.boxes), **m,
               "postprocess": {"score_thresh": EVAL_SCORE_THRESH, "nms_iou": nms_iou(model), "max_det": MAX_DETECTIONS}}
    pr_curves = metrics.pop("pr_curves")  # drawn, not stored: 101 points per class
    if run is not None:
        from ...plots import plot_detections, plot_pr_curves

        write_metrics(run, split, metrics)
        plot_pr_curves(pr_curves, run / "pr_curve.png", m["per_class"])
        shown_at = card.get("predict", PREDICT_DEFAULTS)
        k = min(MOSAIC_IMAGES, len(ds))
        shown = [keep_detections(p, shown_at["conf"], shown_at["iou"], MAX_DETECTIONS, card["classes"]) for p in preds[:k]]
        plot_detections(ds.images[:k], shown, targets[:k], run / "predictions.png")
    return metrics
