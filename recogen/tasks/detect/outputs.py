"""What goes into and comes out of a torchvision detector: labels shifted past its background class,
its own post-processing settings, raw detections of a batch, and the kept boxes as JSON-able dicts."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

# Evaluation keeps nearly every box: mAP integrates over all score thresholds (COCO practice).
# Prediction defaults (Ultralytics' conf/iou, COCO's 100 detections), stored in the model card.
PREDICT_DEFAULTS = {"conf": 0.25, "iou": 0.45, "max_det": 100}
EVAL_SCORE_THRESH = 0.001


def _to_model_targets(targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": t["boxes"].float(), "labels": t["labels"] + 1} for t in targets]


def _from_model_outputs(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    # Sigmoid heads (FCOS, RetinaNet) score the background column like any class; it is trained to
    # stay low but can still come out, so drop it (Faster R-CNN and SSD already do).
    out = []
    for o in outputs:
        fg = o["labels"] > 0
        out.append({"boxes": o["boxes"][fg], "scores": o["scores"][fg], "labels": o["labels"][fg] - 1})
    return out


def _postprocess_owner(model: nn.Module):
    """Where a torchvision detector keeps score_thresh / nms_thresh / detections_per_img."""
    return model.roi_heads if hasattr(model, "roi_heads") else model


@contextlib.contextmanager
def postprocess(model: nn.Module, score_thresh: float, nms_thresh: float | None = None, max_det: int | None = None):
    """Temporarily set a detector's own score threshold, NMS IoU and detections per image."""
    owner = _postprocess_owner(model)
    keys = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "detections_per_img": max_det}
    saved = {k: getattr(owner, k) for k, v in keys.items() if v is not None}
    for k, v in keys.items():
        if v is not None:
            setattr(owner, k, v)
    try:
        yield model
    finally:
        for k, v in saved.items():
            setattr(owner, k, v)


def nms_iou(model: nn.Module) -> float:
    """The detector's own NMS IoU threshold."""
    return float(_postprocess_owner(model).nms_thresh)


@torch.inference_mode()
def detect_batch(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """Raw detections (labels 0..K-1) for a uint8 batch at the model's size, with the model's own
    post-processing as currently set (see :func:`postprocess`)."""
    dev = next(model.parameters()).device
    out: list[dict[str, torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(dev).float().div_(255)
        out += [{k: v.cpu() for k, v in o.items()} for o in _from_model_outputs(model(list(x)))]
    return out


def keep_detections(raw: dict[str, torch.Tensor], conf: float, iou: float, max_det: int,
                    classes: list[str] | None = None) -> list[dict[str, Any]]:
    """Score threshold, class-wise NMS at ``iou``, best ``max_det``; as JSON-able dicts."""
    from torchvision.ops import batched_nms, remove_small_boxes

    keep = raw["scores"] >= conf
    boxes, scores, labels = raw["boxes"][keep], raw["scores"][keep], raw["labels"][keep]
    # Boxes squashed flat by clipping to the image edge carry no location (as Faster R-CNN's 1e-2 px rule).
    keep = remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = batched_nms(boxes.float(), scores.float(), labels, iou)[:max_det]  # sorted by score
    return [{"label": classes[int(labels[i])] if classes else str(int(labels[i])), "index": int(labels[i]),
             "score": round(float(scores[i]), 5), "box": [round(float(v), 2) for v in boxes[i]]} for i in order]
