"""DCGAN (Radford et al. 2016): a transposed-convolution generator and a strided-convolution
discriminator, with the losses the field uses and the usual stabilisers.

* losses: ``nonsaturating`` (Goodfellow et al. 2014, the default), ``hinge`` (Lim & Ye 2017;
  Miyato et al. 2018), ``wgan-gp`` (Gulrajani et al. 2017: critic steps per generator step, gradient
  penalty, no BatchNorm in the critic);
* spectral normalisation of the discriminator (Miyato et al. 2018), replacing its BatchNorm;
* an EMA of the generator's weights, used for sampling (Karras et al. 2018);
* class-conditional: the generator sees a class embedding beside z; the discriminator is a
  projection discriminator (Miyato & Koyama 2018).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm as _sn

from ..catalog import register_model
from ...errors import ConfigError
from ...registry import Registry
from .base import GenerativeModel, maybe_ema, no_pretrained
from .layers import num_stages


class Generator(nn.Module):
    """z (+ class embedding) -> Linear -> (C, base, base) -> [ConvT 4x4/2 + BN + ReLU] x stages -> tanh."""

    def __init__(self, *, latent_dim: int, width: int, stages: int, base: int, out_chans: int, num_classes: int = 0):
        super().__init__()
        chans = [width * 2**i for i in range(stages)][::-1]  # e.g. [2w, w] for 2 stages
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.top, self.base = chans[0], base
        z_in = latent_dim * (2 if num_classes else 1)
        self.project = nn.Sequential(nn.Linear(z_in, chans[0] * base * base, bias=False), nn.Unflatten(1, (chans[0], base, base)),
                                     nn.BatchNorm2d(chans[0]), nn.ReLU(True))
        layers, c_in = [], chans[0]
        for c_out in chans[1:]:
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
            c_in = c_out
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(c_in, out_chans, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], 1)
        return self.net(self.project(z))


class Discriminator(nn.Module):
    """[Conv 4x4/2 + (BN) + LeakyReLU(0.2)] x stages -> linear score (+ projection of a class embedding)."""

    def __init__(self, *, width: int, stages: int, base: int, in_chans: int, num_classes: int = 0, norm: str = "bn"):
        super().__init__()
        wrap: Callable[[nn.Module], nn.Module] = _sn if norm == "sn" else (lambda m: m)
        layers, c_in = [], in_chans
        for i in range(stages):
            c_out = width * 2**i
            layers.append(wrap(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm != "bn" or i == 0)))
            if norm == "bn" and i > 0:  # DCGAN: no BatchNorm on the first layer
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, True))
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        feat = c_in * base * base
        self.score = wrap(nn.Linear(feat, 1))
        self.embed = wrap(nn.Embedding(num_classes, feat)) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        out = self.score(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1)  # projection discriminator
        return out


# ------------------------------------------------------------------------------------------- losses
# name -> (discriminator loss(real scores, fake scores), generator loss(fake scores))
GAN_LOSSES: Registry = Registry("GAN loss", error=ConfigError)
GAN_LOSSES.register("nonsaturating")((lambda r, f: F.softplus(-r).mean() + F.softplus(f).mean(), lambda f: F.softplus(-f).mean()))
GAN_LOSSES.register("hinge")((lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(), lambda f: -f.mean()))
GAN_LOSSES.register("wgan-gp")((lambda r, f: f.mean() - r.mean(), lambda f: -f.mean()))


class DCGAN(GenerativeModel):
    adam_betas = (0.5, 0.999)  # Radford et al.

    def __init__(self, *, in_chans: int, image_size: int, num_classes: int, width: int = 32, latent_dim: int = 64,
                 loss: str = "nonsaturating", spectral_norm: bool = False, ema: float = 0.999, conditional: bool = False,
                 n_critic: int | None = None, gp_weight: float = 10.0):
        super().__init__()
        self.num_classes, self.conditional, self.latent_dim = num_classes, conditional, latent_dim
        self.loss_name, self.d_loss_fn, self.g_loss_fn = loss, *GAN_LOSSES.get(loss).fn
        self.gp_weight = gp_weight if loss == "wgan-gp" else 0.0
        # WGAN-GP trains the critic several times per generator step and needs it free of BatchNorm
        # (the penalty is per sample); spectral norm replaces BatchNorm too.
        self.n_critic = n_critic or (5 if loss == "wgan-gp" else 1)
        if loss == "wgan-gp":
            self.adam_betas = (0.0, 0.9)
        norm = "sn" if spectral_norm else ("none" if loss == "wgan-gp" else "bn")
        stages, base = num_stages(image_size)
        k = num_classes if conditional else 0
        self.generator = Generator(latent_dim=latent_dim, width=width, stages=stages, base=base, out_chans=in_chans, num_classes=k)
        self.discriminator = Discriminator(width=width, stages=stages, base=base, in_chans=in_chans, num_classes=k, norm=norm)
        self.apply(_dcgan_init)
        self.generator_ema = maybe_ema(self.generator, ema)  # after init: it starts as a copy

    def param_groups(self):
        return {"d": list(self.discriminator.parameters()), "g": list(self.generator.parameters())}

    def phases(self, batch_idx):
        return ["d", "g"] if batch_idx % self.n_critic == self.n_critic - 1 else ["d"]

    def _fake(self, n: int, y: torch.Tensor | None, device) -> torch.Tensor:
        return self.generator(torch.randn(n, self.latent_dim, device=device), y)

    def phase_loss(self, phase, x, y):
        y = y if self.conditional else None
        x = x * 2 - 1
        if phase == "d":
            with torch.no_grad():
                fake = self._fake(len(x), y, x.device)
            real_s, fake_s = self.discriminator(x, y), self.discriminator(fake, y)
            loss = self.d_loss_fn(real_s, fake_s)
            logs = {"d_loss": loss.detach(), "d_real": real_s.detach().mean(), "d_fake": fake_s.detach().mean()}
            if self.gp_weight:
                gp = self._gradient_penalty(x, fake, y)
                loss, logs["gp"] = loss + self.gp_weight * gp, gp.detach()
            return loss, logs
        loss = self.g_loss_fn(self.discriminator(self._fake(len(x), y, x.device), y))
        return loss, {"g_loss": loss.detach()}

    def _gradient_penalty(self, real, fake, y):
        a = torch.rand(len(real), 1, 1, 1, device=real.device)
        mix = (a * real + (1 - a) * fake).requires_grad_(True)
        (g,) = torch.autograd.grad(self.discriminator(mix, y).sum(), mix, create_graph=True)
        return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()

    def after_step(self, phase):
        if phase == "g" and self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)

    @property
    def sampler_net(self) -> nn.Module:
        return self.generator_ema.module if self.generator_ema is not None else self.generator

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None, **opts: Any) -> torch.Tensor:
        labels = self.check_labels(labels)
        if self.conditional and labels is None:
            raise ConfigError("a conditional GAN samples given classes")
        dev = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator).to(dev)
        net = self.sampler_net
        was = net.training
        net.eval()
        try:
            return (net(z, labels.to(dev) if labels is not None else None) + 1) / 2
        finally:
            net.train(was)


def _dcgan_init(m: nn.Module) -> None:
    """N(0, 0.02) weights, BN scale N(1, 0.02) (Radford et al.)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and not hasattr(m, "parametrizations"):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


@register_model("dcgan", task="generate", family="gan", description="DCGAN; losses nonsaturating/hinge/wgan-gp, spectral norm, EMA, conditional")
def dcgan(*, num_classes: int, in_chans: int = 1, image_size: int = 28, pretrained: bool = False, **kw: Any) -> DCGAN:
    no_pretrained("dcgan", pretrained)
    return DCGAN(in_chans=in_chans, image_size=image_size, num_classes=num_classes, **kw)
