"""Segmentation training losses, by name (``--loss``): cross-entropy, and cross-entropy plus soft Dice.

Cross-entropy averages over pixels, so on scenes that are mostly background a thin or rare class
(a digit "1" is a few pixels wide) weighs almost nothing and can stay unpredicted for the whole run.
The soft Dice term (Milletari et al. 2016; as segmentation_models_pytorch's multiclass ``DiceLoss``)
scores each class by its overlap, whatever its pixel count, and is averaged over the classes present
in the batch's targets.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from ...errors import ConfigError

IGNORE_INDEX = 255


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in ``target`` (B, H, W); ignored pixels left out."""
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.clamp(max=k - 1).where(target != ignore_index, 0), k).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    card = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (card + eps)
    present = onehot.sum(dims) > 0
    return (1 - dice[present]).mean() if present.any() else logits.sum() * 0


def _ce(logits, target):
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": _ce,
    "ce+dice": lambda logits, target: _ce(logits, target) + soft_dice_loss(logits, target),
}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``name``; an unknown name is a ConfigError listing the choices."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown --loss {name!r} for segmentation; choose {' or '.join(LOSSES)}") from None
