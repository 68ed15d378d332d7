"""The LightningModule of classification: cross-entropy with label smoothing, augmentation on the device."""
from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ...config import ClassifyConfig
from ...data.transforms import BatchAugment, get_preset
from ..base_module import TaskModule


class ClassifierModule(TaskModule):
    """Trains ``model`` as ``cfg`` says; logs ``train_loss`` (per epoch), ``val_loss`` and ``val_acc``."""

    def __init__(self, model: nn.Module, cfg: ClassifyConfig, num_classes: int, mean: list[float], std: list[float],
                 hflip_ok: bool):
        super().__init__(model, cfg)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        preset = get_preset(cfg.augment)
        self.augment = None if preset.is_identity else BatchAugment(preset, hflip_ok)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        if cfg.unfreeze_at is not None:  # refused by the skeleton in a run of several processes
            self.single_process_only = ("--unfreeze-at (DDP fixes the trained parameters when it starts; "
                                        "train the whole network instead)")

    # ------------------------------------------------------------------ fine-tuning (tasks/finetune.py)
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        # Recomputed from the epoch each time, so a resumed run is frozen or not exactly as before.
        from ..finetune import frozen_at, set_backbone_frozen

        if self.cfg.freeze_backbone:
            self.backbone_frozen = frozen_at(self.cfg, self.current_epoch)
            set_backbone_frozen(self.model, self.backbone_frozen)

    @property
    def train_regime(self) -> bool | None:
        """Whether this epoch trains a frozen backbone (None: not fine-tuning). Unfrozen epochs cost
        more; the time budget (tasks/budget.py) re-plans when this changes."""
        return getattr(self, "backbone_frozen", None) if self.cfg.freeze_backbone else None

    def on_train_batch_start(self, batch, batch_idx):
        # Lightning puts the module back in train mode after validation: keep frozen BatchNorm in eval.
        if getattr(self, "backbone_frozen", False):
            from ..finetune import backbone_modules

            for m in backbone_modules(self.model):
                m.eval()

    def configure_optimizers(self):
        from ..finetune import param_groups
        from ..trainer import configure_optimizers

        mult = 1.0 if self.cfg.backbone_lr_mult is None else self.cfg.backbone_lr_mult
        if mult == 1.0 and not self.cfg.freeze_backbone:  # one group, as every run before fine-tuning had
            return super().configure_optimizers()
        return configure_optimizers(self.cfg, param_groups(self.model, self.cfg.lr, mult),
                                    int(self.trainer.estimated_stepping_batches))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        # Runs on the training device: augmentation on the GPU when there is one.
        x, y = batch
        x = x.float().div_(255)
        if self.trainer.training and self.augment is not None:
            x = self.augment(x)
        x = (x - self.mean) / self.std
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y, label_smoothing=self.cfg.label_smoothing)
        self.log_train_losses({"loss": loss}, len(y), batch_idx)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.log("val_loss", nn.functional.cross_entropy(logits.float(), y), prog_bar=True, sync_dist=True)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)
