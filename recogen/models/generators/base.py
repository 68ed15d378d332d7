"""What every generative model offers the training task, and the EMA of weights they share.

The task never branches on the family: it asks the model for its parameter groups (one optimiser
each), the phases of a training step (``["d", "g"]`` for a GAN, ``["model"]`` otherwise), the loss
of each phase, and ``sample``. Images enter as floats in [0, 1] and samples leave the same way.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, ModelError


class GenerativeModel(nn.Module):
    """Base class: subclasses set ``num_classes`` and ``conditional`` and implement the methods below."""

    num_classes: int
    conditional: bool
    # Optimiser hyper-parameters the family's papers use; the task resolves "auto" options from them.
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # The grid logged every epoch: how many samples and the sampler options (diffusion uses fewer steps).
    preview_n: int = 64
    preview_opts: dict[str, Any] = {}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Name -> parameters, one optimiser per name."""
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def phases(self, batch_idx: int) -> list[str]:
        """The optimiser steps of this batch, in order (names from :meth:`param_groups`)."""
        return ["model"]

    def phase_loss(self, phase: str, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss to minimise in ``phase`` for images ``x`` in [0, 1] and labels ``y``, plus values to log."""
        raise NotImplementedError

    def after_step(self, phase: str) -> None:
        """Called after each optimiser step (EMA updates)."""

    @torch.no_grad()
    def val_metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Deterministic validation numbers (empty: the family has none worth logging)."""
        return {}

    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None, **opts: Any) -> torch.Tensor:
        """``n`` images as floats in [0, 1], (N, C, H, W); ``labels`` for a conditional model."""
        raise NotImplementedError

    def check_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Labels are required by a conditional model and refused by an unconditional one."""
        if labels is None:
            return None
        if not self.conditional:
            raise ConfigError("this model is unconditional: drop --class, or train with --conditional")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ConfigError(f"class index out of range: the model knows classes 0..{self.num_classes - 1}")
        return labels


@torch.no_grad()
def sample_uint8(model: GenerativeModel, n: int, seed: int, labels: torch.Tensor | None = None, batch: int = 500,
                 **opts: Any) -> torch.Tensor:
    """``n`` samples of ``model`` as uint8 (N, C, H, W) on the CPU, drawn in batches of ``batch``.

    One ``torch.Generator`` seeded with ``seed`` runs through all batches, so the same seed gives the
    same images; ``labels`` (N,) are sliced per batch; ``opts`` go to ``model.sample``.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        k = min(batch, n - i)
        x = model.sample(k, generator=g, labels=None if labels is None else labels[i : i + k], **opts)
        out.append(x.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu())
    return torch.cat(out)


def no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ModelError(f"{name} has no published weights; train it with `recogen generate train --model {name}`")


class EMA(torch.optim.swa_utils.AveragedModel):
    """Exponential moving average of a network's weights and buffers (torch's AveragedModel).

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so that short runs, a few hundred
    steps long, are not dominated by the random initial weights (as in TensorFlow's EMA ``num_updates``).
    """

    def __init__(self, net: nn.Module, decay: float):
        def ema(avg: torch.Tensor, cur: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
            return avg * d + cur * (1.0 - d)

        super().__init__(net, avg_fn=ema, use_buffers=True)
        for p in self.module.parameters():
            p.requires_grad_(False)


def maybe_ema(net: nn.Module, decay: float) -> EMA | None:
    """An EMA copy of ``net``, or None when ``decay`` is 0 (then sampling uses ``net`` itself)."""
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"--ema must be in [0, 1) (0 turns it off), got {decay}")
    return EMA(net, decay) if decay > 0 else None
