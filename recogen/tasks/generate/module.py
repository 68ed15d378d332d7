"""The LightningModule of generation: one manual-optimisation loop for every family (VAE, GAN, diffusion).

The loop never branches on the family: each model (``recogen.models.generators``) names its optimiser
groups and the phases of a step (a GAN's discriminator then generator), so Lightning's manual
optimisation runs them all, with the checkpoints, history, TensorBoard and bit-identical resume every
task shares.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...config import GenerateConfig
from ...data.transforms import BatchAugment, get_preset
from ...errors import ConfigError
from ...models.generators.base import sample_uint8
from ..base_module import TaskModule
from ..trainer import make_scheduler, optimizer_impl
from .sampling import default_labels, grid_nrow, make_grid

MAX_PREVIEWS = 100  # TensorBoard sample grids per run
PROGRESS_KEYS = ("loss", "d_loss", "g_loss", "recon")  # shown in the progress bar


def make_optimizer(cfg: GenerateConfig, params, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Adam or AdamW with the family's betas (fused where the device has the kernel: trainer.optimizer_impl)."""
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **optimizer_impl(params))
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **optimizer_impl(params))
    raise ConfigError(f"unknown --optimizer {cfg.optimizer!r} for generation; choose adam or adamw")


class GenerativeModule(TaskModule):
    """Trains any generative ``model`` by its phases; logs the epoch mean of each value the phases name
    (under that name: ``loss``, ``d_loss``, ``kl``...), the model's validation metrics, and a sample grid
    per epoch (at most :data:`MAX_PREVIEWS`) to TensorBoard."""

    def __init__(self, model: nn.Module, cfg: GenerateConfig, hflip_ok: bool, total_steps: int):
        super().__init__(model, cfg)
        self.total_steps = total_steps
        # GANs alternate two optimisers; one manual loop serves every family the same way.
        self.automatic_optimization = False
        self.groups = list(model.param_groups())
        if len(self.groups) > 1:  # read by the training skeleton (tasks/skeleton.py)
            self.single_process_only = "a GAN (its optimisers take turns, which DDP does not follow yet)"
        preset = get_preset(cfg.augment)
        self.augment = None if preset.is_identity else BatchAugment(preset, hflip_ok)

    # The base class re-seeds each epoch (noise, timesteps and latents do not depend on a resume) and
    # starts the epoch means afresh: a GAN with several critic steps per generator step may have an
    # epoch without a generator step, which then logs no g_loss.

    def compile_targets(self):
        # The phases call the model's networks (generator, discriminator, encoder, UNet...), not the
        # model: compile those; not the EMA copies (they only sample, after training).
        from torch.optim.swa_utils import AveragedModel

        return [m for m in self.model.children() if isinstance(m, nn.Module) and not isinstance(m, AveragedModel)
                and any(True for _ in m.children()) and any(p.requires_grad for p in m.parameters())]

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        x = x.float().div_(255)
        if self.trainer.training and self.augment is not None:
            x = self.augment(x)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def training_step(self, batch, batch_idx):
        x, y = batch
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        for phase in self.model.phases(batch_idx):
            opt = opts[self.groups.index(phase)]
            if len(opts) > 1:
                self.toggle_optimizer(opt)  # no gradients into the other network's weights
            loss, logs = self.model.phase_loss(phase, x, y)
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()
            if len(opts) > 1:
                self.untoggle_optimizer(opt)
            self.model.after_step(phase)
            for k, v in logs.items():  # unweighted means of the phases' values; NaN stays NaN (a diverging run)
                self.train_losses.add(k, v)
        scheds = self.lr_schedulers()
        for s in scheds if isinstance(scheds, list) else [scheds] if scheds is not None else []:
            s.step()
        if batch_idx + 1 == self.trainer.num_training_batches:
            # Logged once per epoch, from the last step (per-step logging costs ~5% of the training time on a CPU).
            self.log_epoch_means(lambda k: k in PROGRESS_KEYS)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        for k, v in self.model.val_metrics(x, y).items():
            self.log(k, v, prog_bar=True, sync_dist=True)

    def on_train_epoch_end(self):
        # The image grid of this epoch in TensorBoard; a private generator keeps the global RNG (and so a
        # resumed run) untouched. At most MAX_PREVIEWS grids per run (every k-th epoch and the last): a
        # small data set has epochs of one or two steps, where a grid per epoch would cost more than the
        # training.
        epochs = self.cfg.epochs
        every = max(1, math.ceil(epochs / MAX_PREVIEWS))
        last = self.current_epoch + 1 == epochs
        if self.logger is not None and hasattr(self.logger, "experiment") and (self.current_epoch % every == 0 or last):
            n = self.model.preview_n
            imgs = sample_uint8(self.model, n, 0, default_labels(self.model, n), **self.model.preview_opts)
            self.logger.experiment.add_image("samples", make_grid(imgs, grid_nrow(self.model, len(imgs))),
                                             self.current_epoch)

    def configure_optimizers(self):
        opts, scheds = [], []
        for params in self.model.param_groups().values():
            opt = make_optimizer(self.cfg, params, self.model.adam_betas)
            opts.append(opt)
            s = make_scheduler(opt, self.cfg.schedule, self.cfg.lr, self.total_steps, warmup=0.1)
            if s is not None:
                scheds.append({"scheduler": s, "interval": "step"})
        return opts, scheds
