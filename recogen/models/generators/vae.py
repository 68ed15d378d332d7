"""Convolutional VAE (Kingma & Welling 2014) with a beta-weighted KL term (Higgins et al. 2017).

Encoder: stride-2 convolutions to a small map, then the mean and log-variance of a Gaussian latent.
Decoder: the mirror image with transposed convolutions; pixels are Bernoulli logits (binary
cross-entropy, as in pytorch/examples' VAE). A conditional VAE feeds a class embedding to both halves.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..catalog import register_model
from .base import GenerativeModel, no_pretrained
from .layers import num_stages


class ConvVAE(GenerativeModel):
    def __init__(self, *, in_chans: int, image_size: int, num_classes: int, width: int = 32, latent_dim: int = 16,
                 beta: float = 1.0, conditional: bool = False):
        super().__init__()
        self.num_classes, self.conditional, self.beta, self.latent_dim = num_classes, conditional, beta, latent_dim
        stages, base = num_stages(image_size)
        chans = [width * 2**i for i in range(stages)]
        self.base, self.top = base, chans[-1]
        emb = 16 if conditional else 0
        self.embed = nn.Embedding(num_classes, emb) if conditional else None
        enc, c_in = [], in_chans
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in = c
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        feat = self.top * base * base
        self.to_stats = nn.Linear(feat + emb, 2 * latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim + emb, feat), nn.ReLU())
        dec = []
        for c_out in chans[::-1][1:]:
            dec += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.ReLU()]
            c_in = c_out
        self.decoder = nn.Sequential(*dec, nn.ConvTranspose2d(c_in, in_chans, 4, 2, 1))

    def _cond(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([h, self.embed(y)], 1) if self.embed is not None else h

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x) for images in [0, 1]."""
        mu, logvar = self.to_stats(self._cond(self.encoder(x * 2 - 1), y)).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.from_latent(self._cond(z, y)).view(-1, self.top, self.base, self.base)
        return self.decoder(h)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] (the Bernoulli means) for latents ``z``."""
        return torch.sigmoid(self.decode_logits(z, y))

    def phase_loss(self, phase, x, y):
        y = y if self.conditional else None
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # 1. reparameterise
        rec = F.binary_cross_entropy_with_logits(self.decode_logits(z, y), x, reduction="sum") / len(x)  # 2. -log p(x|z)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / len(x)  # 3. KL(q(z|x) || N(0, I))
        return rec + self.beta * kl, {"recon": rec.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean of ``x`` (deterministic): images in [0, 1]."""
        y = y if self.conditional else None
        return self.decode(self.encode(x, y)[0], y)

    @torch.no_grad()
    def val_metrics(self, x, y):
        return {"val_recon_mse": F.mse_loss(self.reconstruct(x, y), x)}

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None, **opts: Any) -> torch.Tensor:
        labels = self.check_labels(labels)
        dev = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator).to(dev)
        return self.decode(z, labels.to(dev) if labels is not None else None)


@register_model("vae", task="generate", family="vae", description="convolutional VAE (beta-VAE), optionally class-conditional")
def vae(*, num_classes: int, in_chans: int = 1, image_size: int = 28, pretrained: bool = False, **kw: Any) -> ConvVAE:
    no_pretrained("vae", pretrained)
    return ConvVAE(in_chans=in_chans, image_size=image_size, num_classes=num_classes, **kw)
