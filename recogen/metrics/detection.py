"""COCO detection metrics: torchmetrics' MeanAveragePrecision (a COCOeval backend underneath) plus the
per-class precision-recall curves that COCOeval's accumulated ``precision`` array holds.

Boxes are xyxy pixels; labels are class indices 0..K-1 (no background). The numbers are COCOeval's own
(tests/test_detect.py checks them against pycocotools run directly on the same predictions).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

# The PR-curve plot is drawn in recogen.plots; this name is kept for code that imports it from here.

# COCO's IoU thresholds .50:.05:.95 (what "mAP" and "mAP@[.5:.95]" mean), reported rounded.
IOU_THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(10)]
MAX_DETECTIONS = 100


def _coco_thresholds() -> tuple[list[float], list[float]]:
    """COCOeval's own IoU and recall thresholds, bit for bit (float64 ``np.linspace``).

    torchmetrics' defaults come from float32 ``torch.linspace``: recall point 0.3 becomes
    0.30000001, which lands on the other side of a recall of exactly 3/10, and the mAP differed from
    COCOeval's in the third decimal on a test case.
    """
    import numpy as np

    return np.linspace(0.5, 0.95, 10).tolist(), np.linspace(0.0, 1.0, 101).tolist()


def coco_backend() -> str:
    """The COCOeval implementation to use: faster-coco-eval (C++, faster) if installed, else pycocotools."""
    import importlib.util

    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


def mean_average_precision(backend: str | None = None, class_metrics: bool = True):
    """torchmetrics' ``MeanAveragePrecision`` set up the way recogen reports detection quality."""
    from torchmetrics.detection import MeanAveragePrecision

    iou_thresholds, rec_thresholds = _coco_thresholds()
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=iou_thresholds,
                                rec_thresholds=rec_thresholds, class_metrics=class_metrics,
                                extended_summary=class_metrics, backend=backend or coco_backend())


def _mean_defined(x: torch.Tensor) -> float | None:
    """COCOeval marks undefined precision (recall never reached, or no ground truth) with -1."""
    x = x[x > -1]
    return float(x.mean()) if x.numel() else None


def detection_metrics(preds: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
                      classes: list[str], backend: str | None = None) -> dict[str, Any]:
    """COCO box metrics of ``preds`` (per image: boxes, scores, labels) against ``targets`` (boxes, labels).

    Returns ``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``mar_100`` (AR with 100 detections per
    image), ``per_class`` ``{name: {ap, ap50}}`` (None for a class absent from the ground truth), and
    ``pr_curves`` ``{name: {recall, precision}}`` at IoU 0.5 (COCO's 101 recall points; precision None
    past the highest recall reached).

    >>> m = detection_metrics(preds, targets, ["cat", "dog"])
    >>> m["map_50"], m["per_class"]["dog"]["ap"]
    """
    backend = backend or coco_backend()
    metric = mean_average_precision(backend)
    metric.update([{k: p[k].detach().float().cpu() if k != "labels" else p[k].cpu() for k in ("boxes", "scores", "labels")}
                   for p in preds],
                  [{"boxes": t["boxes"].float().cpu(), "labels": t["labels"].cpu()} for t in targets])
    r = metric.compute()
    out: dict[str, Any] = {k: float(r[k]) for k in ("map", "map_50", "map_75", "mar_100", "map_small", "map_medium", "map_large")}
    per_class: dict[str, dict[str, float | None]] = {c: {"ap": None, "ap50": None} for c in classes}
    pr: dict[str, dict[str, list]] = {}
    present = [int(c) for c in torch.atleast_1d(r["classes"]).tolist()]
    if present and "precision" in r:
        # precision is (IoU thresholds T, recall points R, classes K, area ranges A, max detections M); K
        # follows the sorted class ids COCOeval saw, the same order as r["classes"].
        prec = r["precision"]
        recall_points = _coco_thresholds()[1]
        ap_per_class = torch.atleast_1d(r["map_per_class"]).tolist()
        for k, (cid, ap) in enumerate(zip(present, ap_per_class)):
            if not 0 <= cid < len(classes):
                continue
            name = classes[cid]
            curve = prec[0, :, k, 0, -1]  # IoU .5, all areas, 100 detections
            per_class[name] = {"ap": ap if ap > -1 else None, "ap50": _mean_defined(curve)}
            if per_class[name]["ap50"] is not None:
                pr[name] = {"recall": [round(v, 4) for v in recall_points],
                            "precision": [round(float(v), 6) if v > -1 else None for v in curve]}
    out.update(per_class=per_class, pr_curves=pr, iou_thresholds=IOU_THRESHOLDS, max_detections=MAX_DETECTIONS,
               backend=backend)
    return out
