"""The LightningModule of segmentation: cross-entropy (+ soft Dice), dense augmentation on the device, and
validation mIoU from one pixel confusion matrix over the whole split."""
from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from ...config import SegmentConfig
from ...data.dense import IGNORE_INDEX
from ...data.transforms import get_preset
from ...errors import ConfigError
from ...metrics.segmentation import miou_from_confusion
from ...models.segmenters.losses import get_loss
from ..base_module import TaskModule


class SegmenterModule(TaskModule):
    """Trains ``model`` as ``cfg`` says; logs ``train_loss`` (per epoch), ``val_loss`` and ``val_miou``.

    ``label_offset`` is the mask value of object class 0 (1 when mask class 0 is background); the
    augmentation uses it to keep boxes and masks in step.
    """

    def __init__(self, model: nn.Module, cfg: SegmentConfig, num_classes: int, mean: list[float], std: list[float],
                 label_offset: int = 1, hflip_ok: bool = True):
        super().__init__(model, cfg)
        self.loss_fn = get_loss(cfg.loss)
        preset = get_preset(cfg.augment)
        self.augment = None
        if not preset.is_identity:
            try:
                from ...data.dense_transforms import DenseAugment
            except ImportError:
                raise ConfigError(f"--augment {cfg.augment} needs recogen.data.dense_transforms, which is missing; "
                                  f"use --augment none") from None
            self.augment = DenseAugment(preset, hflip_ok=hflip_ok, label_offset=label_offset)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.val_cm = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        # Runs on the training device. Geometry moves image and mask together on the uint8 batch
        # (the mask gets 255 where the affine brings in pixels from outside the image).
        x, m = batch
        if self.trainer.training and self.augment is not None:
            none = [torch.zeros(0, 4)] * len(x), [torch.zeros(0, dtype=torch.long)] * len(x)
            x, _, _, m = self.augment(x, *none, m)
        x = (x.float().div_(255) - self.mean) / self.std
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, m.long()

    def training_step(self, batch, batch_idx):
        x, m = batch
        logits = self.model(x).float()
        # A batch whose pixels are all ignored would give 0/0 = NaN.
        loss = self.loss_fn(logits, m) if (m != IGNORE_INDEX).any() else logits.sum() * 0
        self.log_train_losses({"loss": loss}, len(x), batch_idx)
        return loss

    def validation_step(self, batch, batch_idx):
        x, m = batch
        logits = self.model(x).float()
        if (m != IGNORE_INDEX).any():
            self.log("val_loss", nn.functional.cross_entropy(logits, m, ignore_index=IGNORE_INDEX), prog_bar=True,
                     sync_dist=True)
        self.val_cm.update(logits.argmax(1), m)

    def on_validation_epoch_end(self):
        # mIoU over the whole split, from the accumulated confusion matrix (a mean of per-batch
        # mIoUs would weight small batches and rare classes wrongly).
        self.log("val_miou", miou_from_confusion(self.val_cm.compute()).float(), prog_bar=True, sync_dist=True)
        self.val_cm.reset()



make_module = SegmenterModule  # the name older code and tests call; the same arguments
