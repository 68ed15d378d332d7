"""The default recipe of segmentation: a narrow U-Net trained for a time budget within a bound of pixel passes."""
from __future__ import annotations

import dataclasses

from ...config import SegmentConfig
from ...data.dense import DenseSplits
from ..runs import resolve_budget
from ..trainer import auto_precision

# Learning to tell shapes apart from scratch takes tens of thousands of image presentations (on
# ``shapes`` the mIoU grows about linearly with them), so the default recipe is a time budget spent on
# as many images as possible: a narrow U-Net at ~64 px of internal resolution. The budget (wall clock,
# re-planned from measured epoch times: tasks/budget.py) decides the epochs; the data set an upper
# bound of pixel passes, about 4x what fits 8 minutes on a 2-core CPU (the machine of BENCHMARKS.md).
DEFAULT_BUDGET = "8m"
# Cross-entropy plus soft Dice: on digit-scenes' validation split (seed 0, equal 3-minute budgets) it
# reached mIoU 0.166 against 0.145 for cross-entropy alone (a thin "1" stayed unpredicted with CE).
DEFAULT_LOSS = "ce+dice"
_PIXEL_PASSES = 420 * 64 * 64 * 320
# Training cost per pixel relative to the default U-Net (width 8), measured on a 2-core CPU at 64-128 px;
# scales the epochs of the other models so their runs take about as long (at least 5 epochs).
_RELATIVE_COST = {"unet": 1.0, "lraspp-mobilenet": 1.3, "deeplabv3-mobilenet": 2.5, "deeplabv3-resnet50": 22.0,
                  "fcn-resnet50": 23.0}
_UNET_WIDTH = 8  # a quarter of the compute of width 16 and no slower to learn per image (measured)


def resolve_defaults(cfg: SegmentConfig, splits: DenseSplits) -> tuple[SegmentConfig, list[str]]:
    """Replace every "auto"/None in ``cfg`` with a choice that fits the data; return the reasons.

    The recipe: a U-Net of width 8 from scratch (``stem_stride`` 2 above 96 px, so the network runs
    at half resolution and upsamples its logits; class logits fused from every decoder stage), AdamW +
    one-cycle at 3e-3, light augmentation, batch 16, cross-entropy + soft Dice, bf16 where the hardware
    has it (else fp32), channels-last; trained for the time budget (8 minutes by default, epochs
    re-planned from measured epoch times) within an upper bound of pixel passes.
    """
    n, (h, w), chans = len(splits.train), splits.image_size, splits.channels
    why: list[str] = []
    c = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    if c.model == "auto":
        # Only the torchvision networks have pretrained weights; from scratch the small U-Net wins on CPU.
        c.model = "lraspp-mobilenet" if c.pretrained else "unet"
        why.append(f"model {c.model} ({'pretrained weights asked for' if c.pretrained else 'from scratch, fast on CPU'})")
    stride = 1
    if c.model == "unet" and not c.model_kwargs:
        stride = 2 if min(h, w) > 96 else 1
        # One more level where the network's input allows a bottleneck of >= 2 px: telling the shapes
        # apart needs context, and depth 5 learned it faster than 4 at the same budget (measured:
        # shapes:600 at 128 px, 100 epochs, mIoU 0.66 vs 0.53).
        depth = 5 if min(h, w) // stride >= 64 else 4
        # Class logits fused from every decoder stage: with 8 channels at the last stage alone, whole
        # classes were never predicted (a "1" read as "4"); fused, every class was (measured on the
        # digit-scenes val split, 30 epochs: mIoU 0.61 vs 0.37, worst class 0.44 vs 0.00).
        c.model_kwargs = {"width": _UNET_WIDTH, "depth": depth, "stem_stride": stride, "fuse_logits": True}
        why.append(f"unet width {_UNET_WIDTH}, depth {depth}" + (", stem stride 2 (works at half resolution)" if stride == 2 else "")
                   + ", logits fused from every decoder stage")
    elif c.model == "unet":
        stride = int(c.model_kwargs.get("stem_stride", 1))
    if c.batch_size is None:
        c.batch_size = 16 if h * w <= 256 * 256 else 8
        why.append(f"batch size {c.batch_size}")
    budget = resolve_budget(c, DEFAULT_BUDGET, why)
    if c.epochs is None:
        cost = _RELATIVE_COST.get(c.model, 4.0)
        if c.model == "unet":
            cost *= (int(c.model_kwargs.get("width", 16)) / _UNET_WIDTH) ** 2
        passes = _PIXEL_PASSES / (cost * n * (h / stride) * (w / stride))
        c.epochs = int(min(300, max(5, round(passes))))
        why.append(f"{'at most ' if budget else ''}{c.epochs} epochs (~{c.epochs * max(1, n // c.batch_size)} steps)")
    if c.lr is None:
        c.lr = 3e-3 if c.model == "unet" else 1e-3
        if c.pretrained:
            c.lr *= 0.3
        why.append(f"lr {c.lr:g} ({c.optimizer}, {c.schedule})")
    if c.augment == "auto":
        c.augment = "light"
        why.append(f"augment {c.augment}")
    if c.loss == "auto":
        c.loss = DEFAULT_LOSS
        why.append(f"loss {c.loss}")
    if c.precision == "auto":
        c.precision = auto_precision()
        why.append(f"precision {c.precision}")
    if c.channels_last is None:
        c.channels_last = True  # about 15% faster convolutions on a 2-core CPU (measured, U-Net)
    c.image_size, c.channels = h, chans
    return c, why
