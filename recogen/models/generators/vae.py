"""Convolutional VAE (Kingma & Welling 2014) with a beta-weighted KL term (Higgins et al. 2017).

Encoder: stride-2 convolutions to a small map, then the mean and log-variance of a Gaussian latent.
Decoder: the mirror image with transposed convolutions; pixels are Bernoulli logits (binary
cross-entropy, as in pytorch/examples' VAE). A conditional VAE feeds a class embedding to both halves.

Sampling prior: N(0, I) by default, or (``prior="gmm"``, what `generate train` uses) a Gaussian
mixture fitted after training to the posterior means of the training images ("ex-post density
estimation", Ghosh et al. 2020, "From variational to deterministic autoencoders"): the aggregate
posterior of a trained VAE is not N(0, I), and decoding latents from its holes gives the blurred,
in-between digits VAEs are known for. On mnist-5k the same trained VAE scored 52.6x the real-vs-real
FID floor with N(0, I) and 12.4x with a 10-component mixture (BENCHMARKS.md). A conditional model
gets one mixture per class (its latents still carry class-dependent style).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..catalog import register_model
from ...errors import ConfigError
from .base import GenerativeModel, no_pretrained
from .layers import num_stages


class ConvVAE(GenerativeModel):
    def __init__(self, *, in_chans: int, image_size: int, num_classes: int, width: int = 32, latent_dim: int = 16,
                 beta: float = 1.0, conditional: bool = False, prior: str = "normal", prior_components: int = 10):
        super().__init__()
        self.num_classes, self.conditional, self.beta, self.latent_dim = num_classes, conditional, beta, latent_dim
        if prior not in PRIORS:
            raise ConfigError(f"unknown VAE prior {prior!r}; choose {' or '.join(PRIORS)}")
        self.prior = prior
        if prior == "gmm":
            # (groups, components): one mixture per class of a conditional model, one in all otherwise.
            # Until fit_prior runs these are K copies of N(0, I), so an unfitted model samples as "normal".
            g = num_classes if conditional else 1
            self.register_buffer("prior_logits", torch.zeros(g, prior_components))
            self.register_buffer("prior_means", torch.zeros(g, prior_components, latent_dim))
            self.register_buffer("prior_scale_tril", torch.eye(latent_dim).expand(g, prior_components, -1, -1).clone())
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
    def best_labels(self, x: torch.Tensor) -> torch.Tensor:
        """For a conditional model: the class whose encode-decode reconstructs each image best (a VAE's own
        classifier), for images given without labels."""
        errs = []
        for k in range(self.num_classes):
            y = torch.full((len(x),), k, dtype=torch.long, device=x.device)
            rec = self.decode(self.encode(x, y)[0], y)
            errs.append(F.mse_loss(rec, x, reduction="none").flatten(1).mean(1))
        return torch.stack(errs, 1).argmin(1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean of ``x`` (deterministic): images in [0, 1]. A conditional model
        without ``y`` encodes each image under the class that reconstructs it best."""
        if not self.conditional:
            y = None
        elif y is None:
            y = self.best_labels(x)
        return self.decode(self.encode(x, y)[0], y)

    @torch.no_grad()
    def val_metrics(self, x, y):
        return {"val_recon_mse": F.mse_loss(self.reconstruct(x, y), x)}

    @torch.no_grad()
    def fit_prior(self, images: torch.Tensor, labels: torch.Tensor, seed: int = 0, max_images: int = 20_000) -> None:
        """Fit the ``gmm`` prior to the posterior means of uint8 ``images`` (N, C, H, W) (a no-op for
        ``normal``): sklearn's full-covariance GaussianMixture, per class for a conditional model."""
        if self.prior != "gmm":
            return
        from sklearn.mixture import GaussianMixture

        g = torch.Generator().manual_seed(seed)
        if len(images) > max_images:  # the mixture needs a sample of the latents, not all of them
            keep = torch.randperm(len(images), generator=g)[:max_images]
            images, labels = images[keep], labels[keep]
        dev = next(self.parameters()).device
        was = self.training
        self.eval()
        mus = []
        for i in range(0, len(images), 512):
            x = images[i : i + 512].to(dev).float() / 255
            y = labels[i : i + 512].to(dev) if self.conditional else None
            mus.append(self.encode(x, y)[0].float().cpu())
        self.train(was)
        mu = torch.cat(mus).double().numpy()
        k = self.prior_means.shape[1]
        for group in range(self.prior_means.shape[0]):
            z = mu[(labels == group).numpy()] if self.conditional else mu
            if len(z) < 2:  # a class without images keeps N(0, I)
                continue
            gm = GaussianMixture(min(k, len(z) // 2), covariance_type="full", reg_covar=1e-4, random_state=seed).fit(z)
            m = len(gm.weights_)
            logits = torch.full((k,), -1e9)  # unused components: never drawn (finite, so weight diffs stay finite)
            logits[:m] = torch.tensor(gm.weights_).log()
            self.prior_logits[group] = logits
            self.prior_means[group, :m] = torch.tensor(gm.means_, dtype=torch.float32)
            self.prior_scale_tril[group, :m] = torch.linalg.cholesky(torch.tensor(gm.covariances_)).float()

    def _prior_latents(self, n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(n, self.latent_dim, generator=generator)
        if self.prior != "gmm":
            return eps
        group = labels.cpu() if labels is not None else torch.zeros(n, dtype=torch.long)
        probs = self.prior_logits.cpu()[group].softmax(1)
        comp = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        mean = self.prior_means.cpu()[group, comp]
        tril = self.prior_scale_tril.cpu()[group, comp]
        return mean + (tril @ eps.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None, **opts: Any) -> torch.Tensor:
        labels = self.check_labels(labels)
        if self.conditional and self.prior == "gmm" and labels is None:
            raise ConfigError("a conditional VAE with a fitted prior samples given classes")
        dev = next(self.parameters()).device
        z = self._prior_latents(n, labels, generator).to(dev)
        return self.decode(z, labels.to(dev) if labels is not None else None)


# Latent priors a VAE samples from (see the module docstring).
PRIORS = ("normal", "gmm")


@register_model("vae", task="generate", family="vae", description="convolutional VAE (beta-VAE), optionally class-conditional")
def vae(*, num_classes: int, in_chans: int = 1, image_size: int = 28, pretrained: bool = False, **kw: Any) -> ConvVAE:
    no_pretrained("vae", pretrained)
    return ConvVAE(in_chans=in_chans, image_size=image_size, num_classes=num_classes, **kw)
