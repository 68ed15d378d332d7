"""The LightningModule of classification: cross-entropy with label smoothing, augmentation on the device."""
from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ...config import ClassifyConfig
from ...data.transforms import BatchAugment, get_preset
from ..base_module import TaskModule
from . import speed


class ClassifierModule(TaskModule):
    """Trains ``model`` as ``cfg`` says; logs ``train_loss`` (per epoch), ``val_loss`` and ``val_acc``."""

    def __init__(self, model: nn.Module, cfg: ClassifyConfig, num_classes: int, mean: list[float], std: list[float],
                 hflip_ok: bool):
        super().__init__(model, cfg)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        if cfg.augment == "speed":  # the speed recipe's shifts and alternating flips (speed.py)
            self.augment = speed.ShiftFlip(hflip_ok, cfg.seed)
        else:
            preset = get_preset(cfg.augment)
            self.augment = None if preset.is_identity else BatchAugment(preset, hflip_ok)
        self.tta = speed.tta_mode(cfg, hflip_ok)  # validation scores what eval and predict will compute
        self.lookahead = speed.Lookahead() if cfg.recipe == "speed" else None
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        if cfg.unfreeze_at is not None:  # refused by the skeleton in a run of several processes
            self.single_process_only = ("--unfreeze-at (DDP fixes the trained parameters when it starts; "
                                        "train the whole network instead)")

    # ------------------------------------------------------------------ fine-tuning (tasks/finetune.py)
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if isinstance(self.augment, speed.ShiftFlip):
            self.augment.epoch = self.current_epoch  # alternating flips
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
        if self.cfg.recipe == "speed":
            return speed.configure_optimizers(self)
        from ..finetune import param_groups
        from ..trainer import configure_optimizers

        mult = 1.0 if self.cfg.backbone_lr_mult is None else self.cfg.backbone_lr_mult
        if mult == 1.0 and not self.cfg.freeze_backbone:  # one group, as every run before fine-tuning had
            return super().configure_optimizers()
        return configure_optimizers(self.cfg, param_groups(self.model, self.cfg.lr, mult),
                                    int(self.trainer.estimated_stepping_batches))

    # ------------------------------------------------------------------ data-computed layers, speed recipe
    def on_train_start(self):
        # After a resume's restore: a model whose first layer is computed from the training images
        # (speednet's whitening) computes it once; the saved buffer says it is done.
        if getattr(self.model, "needs_data_init", False):
            images = speed.train_images(self.trainer)
            if images is None:
                raise RuntimeError(f"{type(self.model).__name__} computes its first layer from the training images, "
                                   "but the training batches do not expose them (recogen's TensorBatches do)")
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.cfg.seed))
            x = images[pick[: speed.WHITEN_IMAGES]].to(self.device).float().div_(255)
            self.model.init_from_data((x - self.mean) / self.std)
        if self.lookahead is not None:
            t = self.trainer
            self.lookahead.resume(self.model, t.global_step, speed.warm_epochs(t.max_epochs), t.num_training_batches)

    def on_before_optimizer_step(self, optimizer):
        # The speed recipe trains the whitening layer's bias in the first epochs only (no gradient: no step).
        whiten = getattr(self.model, "whiten", None)
        if self.lookahead is not None and whiten is not None and self.current_epoch >= speed.warm_epochs(self.trainer.max_epochs):
            whiten.bias.grad = None

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.lookahead is None:
            return
        t = self.trainer
        self.lookahead.step(self.model, t.global_step, t.max_epochs * t.num_training_batches, self.current_epoch,
                            speed.warm_epochs(t.max_epochs))
        if batch_idx + 1 == t.num_training_batches:  # before validation and the epoch's checkpoints
            self.lookahead.sync(self.model)

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
        logits = speed.tta_logits(self.model, x, self.tta)
        self.log("val_loss", nn.functional.cross_entropy(logits.float(), y), prog_bar=True, sync_dist=True)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)
