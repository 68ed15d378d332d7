"""What every task's LightningModule shares: the network and config, per-epoch re-seeding, epoch means
of the training losses, ``--compile``, and the configured optimiser and LR schedule."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from .trainer import configure_optimizers


class EpochMeans:
    """Epoch means of named training values, kept as tensors on the values' device.

    Adding a step's values is two in-place additions per name: no host-device synchronisation and no
    per-step Python of a metric object (torchmetrics' MeanMetric checked every value for NaN, a
    synchronisation on a GPU, and cost about 0.2 ms a call on a CPU, per logged loss). The arithmetic
    is MeanMetric's, so the logged means are the same numbers: sum(value * weight) / sum(weight) in
    float32. A NaN stays NaN (the finite-loss guard stops such a run).
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}  # whole numbers of images: exact as floats, no tensor op needed

    def add(self, name: str, value: torch.Tensor, weight: float = 1.0) -> None:
        value = value.detach()
        if value.dtype != torch.float32:
            value = value.float()
        if name not in self.sums:
            self.sums[name] = torch.zeros((), dtype=torch.float32, device=value.device)
            self.weights[name] = 0.0
        # float32 products summed, as MeanMetric does (a non-scalar value: each element weighted).
        self.sums[name] += value * float(weight) if value.ndim == 0 else (value * float(weight)).sum()
        self.weights[name] += float(weight) * value.numel()

    def mean(self, name: str) -> torch.Tensor:
        return self.sums[name] / self.weights[name]

    def names(self) -> list[str]:
        return list(self.sums)

    def reset(self) -> None:
        self.sums.clear()
        self.weights.clear()


class TaskModule(pl.LightningModule):
    """Base of the tasks' LightningModules; a task adds its batches, steps and validation metric."""

    def __init__(self, model: nn.Module, cfg: Any):
        super().__init__()
        self.model, self.cfg = model, cfg
        # One epoch mean per named training loss (a detector's names depend on its architecture).
        self.train_losses = EpochMeans()

    def forward(self, x):
        return self.model(x)

    # ---------------------------------------------------------------------------------- --compile
    def compile_targets(self) -> list[nn.Module]:
        """The networks ``--compile`` compiles: the model (a task whose steps call parts of it, such as a
        GAN's generator and discriminator, names those instead)."""
        return [self.model]

    def configure_model(self):
        # Lightning's hook for this, inside the strategy's context. nn.Module.compile() compiles each
        # network in place: its state-dict keys stay the same (torch.compile(model) would wrap it and
        # prefix every key with "_orig_mod."), so checkpoints, --resume and model.safetensors are the
        # same files as without --compile, and they load into an uncompiled network.
        if getattr(self.cfg, "compile", False):
            for net in self.compile_targets():
                if getattr(net, "_compiled_call_impl", None) is None:
                    net.compile()

    def on_train_epoch_start(self):
        # Re-seed per epoch: dropout, augmentation and noise draws then do not depend on whether the
        # run was interrupted and resumed before this epoch. Each process of a multi-process run draws
        # its own (rank 0 those of a single process): shares of a batch get different augmentations.
        torch.manual_seed(self.cfg.seed * 100_003 + self.current_epoch + 1_000_003 * self.global_rank)
        self.train_losses.reset()

    def log_train_losses(self, losses: dict[str, torch.Tensor], n: int, batch_idx: int, shown: str = "loss") -> None:
        """Add this step's ``losses`` (weighted by its ``n`` images) to their epoch means, logged as
        ``train_<name>`` (``train_loss`` for "loss") once per epoch, from the last step so that callbacks
        see them at epoch end: a self.log every step costs about as much as a small CNN's step on a CPU
        (benchmarks/train_throughput.py)."""
        for key, value in losses.items():
            self.train_losses.add(_logged_name(key), value, n)
        if batch_idx + 1 == self.trainer.num_training_batches:
            self.log_epoch_means(lambda name: name == _logged_name(shown))

    def log_epoch_means(self, prog_bar=lambda name: False, names=None) -> None:
        """Log the epoch means (of ``names``, default all) for this epoch; from the epoch's last step.

        One value per epoch (batch_size 1: Lightning's epoch mean of it is the value itself); several
        processes average their means, which are over equal shares of every batch."""
        for name in self.train_losses.names() if names is None else names:
            self.log(name, self.train_losses.mean(name), on_step=False, on_epoch=True, prog_bar=prog_bar(name),
                     batch_size=1, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return configure_optimizers(self.cfg, params, int(self.trainer.estimated_stepping_batches))


def _logged_name(key: str) -> str:
    return "train_loss" if key == "loss" else f"train_{key}"


def uncompile(model: nn.Module) -> nn.Module:
    """Undo ``--compile`` (``nn.Module.compile()``) on ``model`` and every module in it, in place: after
    training, evaluation and sampling run eagerly (other batch sizes and eval mode would compile again)."""
    for m in model.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    return model
