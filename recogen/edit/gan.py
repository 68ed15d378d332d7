"""GAN editing: a GAN has no encoder, so an image's latent is found by search (GAN inversion,
Zhu et al. 2016; Creswell & Bharath 2018): optimise z with Adam so that G(z) matches the image in
pixel MSE, from several random starts, and keep the best.

* interpolate: slerp between the searched latents (z ~ N(0, I)).
* vary: ``z' = cos(s pi/2) z + sin(s pi/2) eps``: strength 0 keeps z, 1 is an independent sample,
  and every mix has the prior's variance, so the decoder never sees an off-distribution z.
* inpaint: search on the known pixels only; the known pixels are then pasted back exactly.
* conditional models: the search also picks the class (every class is searched, the best match
  wins); a class swap mixes the generator's class embeddings.
"""
from __future__ import annotations

import torch

from .base import Editor, frozen, mixed_class, prior_mix, register_editor


@register_editor("gan")
class GANEditor(Editor):
    family = "gan"
    # Measured on the tests' 16 px digits DCGAN: MSE stops falling after about 200 Adam steps at lr
    # 0.05; 4 restarts avoid the worst local minima. prior: weight of mean(z^2), which keeps z in
    # the region the generator was trained on.
    options = {"search_steps": 200, "restarts": 4, "search_lr": 0.05, "prior": 1e-3}
    zero_ok = ("search_steps",)

    @property
    def net(self):
        return self.model.sampler_net

    def search(self, x: torch.Tensor, g: torch.Generator, labels: torch.Tensor | None = None,
               keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents (and classes, for a conditional model) whose images best match ``x`` where ``keep``."""
        n, d, r = len(x), self.model.latent_dim, int(self.opts["restarts"])
        classes = [None]
        if self.conditional:
            classes = [labels] if labels is not None else [torch.full((n,), k, dtype=torch.long)
                                                           for k in range(self.model.num_classes)]
        k = len(classes)
        # One batch holds every (class, restart, image) candidate: (k * r * n, d).
        z = torch.randn((k * r * n, d), generator=g).requires_grad_(True)
        ys = None if classes[0] is None else torch.cat([c for c in classes for _ in range(r)])
        target = (x * 2 - 1).repeat(k * r, 1, 1, 1)
        w = torch.ones_like(target[:, :1]) if keep is None else keep.float().expand(len(target), 1, -1, -1)
        opt = torch.optim.Adam([z], lr=float(self.opts["search_lr"]))
        with frozen(self.net) as net, torch.enable_grad():
            for _ in range(int(self.opts["search_steps"])):
                err = ((net(z, ys) - target) ** 2 * w).flatten(1).sum(1) / w.flatten(1).sum(1) / x.shape[1]
                loss = err.sum() + float(self.opts["prior"]) * z.pow(2).mean(1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                err = ((net(z, ys) - target) ** 2 * w).flatten(1).sum(1)
        best = err.view(k * r, n).argmin(0)  # per image: the best candidate
        idx = best * n + torch.arange(n)
        return z.detach()[idx], None if ys is None else ys[idx]

    def invert(self, x, g, labels=None):
        return self.search(x, g, labels)

    @torch.no_grad()
    def decode(self, z, labels=None):
        with frozen(self.net) as net:
            return (net(z, labels) + 1) / 2

    @torch.no_grad()
    def vary(self, x, strength, n, g):
        z, y = self.search(x, g)
        eps = torch.randn((n, z.shape[1]), generator=g)
        return self.decode(prior_mix(z, eps, strength), None if y is None else y.expand(n))

    @torch.no_grad()
    def inpaint(self, x, fill, g):
        keep = ~fill
        z, y = self.search(x, g, keep=keep)
        return torch.where(keep, x, self.decode(z, y))

    @torch.no_grad()
    def decode_between(self, z, a, b, w):
        with mixed_class(self.net, a, b, w):  # the generator's class embedding, mixed
            return self.decode(z, torch.full((len(z),), a, dtype=torch.long))
