"""Semantic-segmentation metrics from one confusion matrix (torchmetrics underneath).

Pixels whose target is the ignore index (255) are left out before counting. The matrix is
accumulated over batches (rows = true class, columns = predicted), and every number here is read
off it, so the metrics of a whole split never depend on how it was batched.

Which classes count in the means: a class that appears neither in the targets nor in the
predictions of the evaluated split has IoU 0/0, which is undefined. ``miou`` (and ``mean_dice``)
average over the classes that do appear in one or the other: the convention of torchmetrics'
``JaccardIndex(average="macro")`` and of mmsegmentation's nan-mean, and the only one under which a
perfect prediction scores 1. ``miou_all_classes`` divides by every class, counting absent ones as
0: a pessimistic bound that shows when a split lacks classes.
"""
from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = 255


def confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel confusion matrix (K, K), int64, rows = true class; ``preds`` are class indices or logits (B, K, ...)."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    if preds.is_floating_point():
        preds = preds.argmax(1)
    return multiclass_confusion_matrix(preds, target.long(), num_classes, ignore_index=ignore_index,
                                       validate_args=False).long()


def segmentation_metrics(cm: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """mIoU, per-class IoU and Dice, pixel accuracy from a confusion matrix (see the module docstring).

    Returns ``miou``, ``miou_all_classes``, ``pixel_accuracy``, ``mean_dice``, ``num_classes_present``
    and ``per_class`` = {name: {iou, dice, support_pixels}} where ``iou``/``dice`` are None for a
    class absent from targets and predictions, and ``support_pixels`` counts its true pixels.

    >>> segmentation_metrics(torch.tensor([[3, 1], [0, 4]]), ["bg", "fg"])["miou"]
    0.775
    """
    cm = torch.as_tensor(cm, dtype=torch.float64)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion matrix {tuple(cm.shape)} does not match {len(class_names)} classes")
    tp = cm.diag()
    support = cm.sum(1)  # true pixels per class
    predicted = cm.sum(0)
    fp, fn = predicted - tp, support - tp
    union = tp + fp + fn
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.nan)
    dice = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.nan)
    total = float(cm.sum())
    mean = lambda v: float(v[present].mean()) if present.any() else 0.0  # noqa: E731
    opt = lambda v: None if v != v else round(float(v), 6)  # noqa: E731 - NaN -> None (JSON null)
    return {
        "miou": round(mean(iou), 6),
        "miou_all_classes": round(float(iou.nan_to_num(0.0).sum()) / k, 6),
        "pixel_accuracy": round(float(tp.sum()) / total, 6) if total else 0.0,
        "mean_dice": round(mean(dice), 6),
        "num_classes_present": int(present.sum()),
        "per_class": {name: {"iou": opt(iou[i]), "dice": opt(dice[i]), "support_pixels": int(support[i])}
                      for i, name in enumerate(class_names)},
    }


def miou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """mIoU over present classes as a 0-dim tensor (cheap; for logging during training)."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    return (tp[present] / union[present]).mean() if present.any() else torch.zeros((), dtype=torch.float64)
