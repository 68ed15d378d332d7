"""Segmentation masks of a batch and the evaluator: one pixel confusion matrix, its metrics and plots.

Masks are scored at the resolution of the data (logits are resized back bilinearly before the argmax),
never at the network's input size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data.dense import IGNORE_INDEX, DenseSet
from ...data.images import fit_to_card
from ...errors import DataError
from ..skeleton import write_metrics


@torch.inference_mode()
def predict_logits(model: nn.Module, card: dict[str, Any], images: torch.Tensor,
                   out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Float logits (B, K, H, W) of a uint8 batch; resized bilinearly to ``out_size`` (default: the batch's size)."""
    out_size = tuple(out_size or images.shape[-2:])
    mean = torch.tensor(card["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(card["normalize"]["std"]).view(1, -1, 1, 1)
    dev = next(model.parameters()).device
    x = (fit_to_card(images, card).float().div_(255) - mean) / std
    logits = model(x.to(dev)).float()
    if tuple(logits.shape[-2:]) != out_size:
        logits = nn.functional.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    return logits.cpu()


def predict_masks(model: nn.Module, card: dict[str, Any], images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Class-index masks uint8 (N, H, W) at the images' own size, for a uint8 batch of any size and channels."""
    out = [predict_logits(model, card, images[i : i + batch_size]).argmax(1).to(torch.uint8)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, *images.shape[-2:]), dtype=torch.uint8)


def evaluate_model(model, card: dict[str, Any], ds: DenseSet, run: Path | None, split: str, data: str,
                   has_test: bool | None = None) -> dict[str, Any]:
    """mIoU, pixel accuracy, Dice and per-class IoU of ``model`` on ``ds``; written (``metrics*.json``,
    ``per_class_iou.png``, ``confusion_matrix.png``, ``sample_predictions.png``) into ``run`` unless None."""
    from ...metrics.heldout import split_fields
    from ...metrics.segmentation import confusion_matrix, segmentation_metrics

    if ds.masks is None:
        raise DataError(f"the {split} split of {data!r} has no masks to evaluate against")
    classes = card["classes"]
    k = len(classes)
    cm = torch.zeros(k, k, dtype=torch.long)
    preds = []
    for i in range(0, len(ds), 32):
        p = predict_masks(model, card, ds.images[i : i + 32])
        cm += confusion_matrix(p, ds.masks[i : i + 32], k)
        preds.append(p)
    m = segmentation_metrics(cm, classes)
    metrics = {"task": "segment", "data": data, **split_fields(split, data, has_test=has_test), "num_images": len(ds),
               "ignore_index": IGNORE_INDEX,
               "miou": m["miou"], "miou_all_classes": m["miou_all_classes"],
               "pixel_accuracy": m["pixel_accuracy"], "mean_dice": m["mean_dice"],
               "num_classes_present": m["num_classes_present"], "per_class": m["per_class"]}
    if run is not None:
        from ...plots import plot_confusion_matrix, plot_mask_mosaic, plot_per_class_iou

        write_metrics(run, split, metrics)
        plot_per_class_iou(metrics["per_class"], run / "per_class_iou.png", title=f"{data} {split}: mIoU {m['miou']:.3f}")
        plot_confusion_matrix(cm.numpy(), classes, run / "confusion_matrix.png", title="Pixel confusion matrix")
        n = min(8, len(ds))
        plot_mask_mosaic(ds.images[:n], ds.masks[:n], torch.cat(preds)[:n], classes, run / "sample_predictions.png")
    return metrics

