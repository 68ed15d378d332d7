"""What every task's LightningModule shares: the network and config, per-epoch re-seeding, epoch means
of the training losses, and the configured optimiser and LR schedule."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

from .trainer import configure_optimizers


class TaskModule(pl.LightningModule):
    """Base of the tasks' LightningModules; a task adds its batches, steps and validation metric."""

    def __init__(self, model: nn.Module, cfg: Any):
        super().__init__()
        self.model, self.cfg = model, cfg
        # One epoch mean per named training loss (a detector's names depend on its architecture).
        self.train_losses = nn.ModuleDict()

    def forward(self, x):
        return self.model(x)

    def on_train_epoch_start(self):
        # Re-seed per epoch: dropout, augmentation and noise draws then do not depend on whether the
        # run was interrupted and resumed before this epoch. Each process of a multi-process run draws
        # its own (rank 0 those of a single process): shares of a batch get different augmentations.
        torch.manual_seed(self.cfg.seed * 100_003 + self.current_epoch + 1_000_003 * self.global_rank)

    def log_train_losses(self, losses: dict[str, torch.Tensor], n: int, batch_idx: int, shown: str = "loss") -> None:
        """Add this step's ``losses`` (weighted by its ``n`` images) to their epoch means, logged as
        ``train_<name>`` (``train_loss`` for "loss") once per epoch, from the last step so that callbacks
        see them at epoch end: a self.log every step costs about as much as a small CNN's step on a CPU
        (benchmarks/classify_throughput.py)."""
        for key, value in losses.items():
            name = _logged_name(key)
            if name not in self.train_losses:
                self.train_losses[name] = MeanMetric().to(self.device)
            self.train_losses[name].update(value.detach().float(), weight=n)
        if batch_idx + 1 == self.trainer.num_training_batches:
            for name, mean in self.train_losses.items():
                self.log(name, mean, on_step=False, on_epoch=True, prog_bar=name == _logged_name(shown),
                         metric_attribute=f"train_losses.{name}")

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return configure_optimizers(self.cfg, params, int(self.trainer.estimated_stepping_batches))


def _logged_name(key: str) -> str:
    return "train_loss" if key == "loss" else f"train_{key}"
