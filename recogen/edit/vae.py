"""VAE editing: the encoder gives the latent directly (the posterior mean), the decoder maps back.

* interpolate: slerp between the posterior means of the two images (the prior is N(0, I)).
* vary: ``z = cos(s pi/2) mu + sin(s pi/2) eps``: strength 0 is the reconstruction, 1 a sample
  from the prior, and every mix has the prior's N(0, I) statistics. (Noise scaled by the posterior's
  own sigma was tried first: it is so narrow on a trained VAE that strength 1 barely changed a pixel.)
* inpaint: iterative projection: decode(encode(x)), paste the known pixels back, repeat.
* conditional models: an image is encoded under the class that reconstructs it best (or the one
  given), and a class swap mixes the two class embeddings in the decoder.
"""
from __future__ import annotations

import torch

from .base import Editor, mixed_class, prior_mix, register_editor


@register_editor("vae")
class VAEEditor(Editor):
    family = "vae"
    # inpaint_iters: encode/decode/paste rounds; the fill settles after about 10-20 on digits.
    options = {"inpaint_iters": 30}

    @torch.no_grad()
    def labels_for(self, x):
        """The class each image is encoded under: None for an unconditional model."""
        if not self.conditional:
            return None
        return self.model.best_labels(x)  # the class that reconstructs each image best

    @torch.no_grad()
    def invert(self, x, g, labels=None):
        labels = self.labels_for(x) if labels is None else labels
        return self.model.encode(x, labels)[0], labels

    @torch.no_grad()
    def decode(self, z, labels=None):
        return self.model.decode(z, labels)

    @torch.no_grad()
    def vary(self, x, strength, n, g):
        y = self.labels_for(x)
        mu = self.model.encode(x, y)[0]
        z = prior_mix(mu, torch.randn((n, mu.shape[1]), generator=g), strength)
        return self.model.decode(z, None if y is None else y.expand(n))

    @torch.no_grad()
    def inpaint(self, x, fill, g):
        y = self.labels_for(x)
        keep = (~fill).float()
        cur = x * keep + 0.5 * (1 - keep)  # the hole starts grey
        for _ in range(int(self.opts["inpaint_iters"])):
            cur = x * keep + self.model.decode(self.model.encode(cur, y)[0], y) * (1 - keep)
        return cur

    @torch.no_grad()
    def decode_between(self, z, a, b, w):
        with mixed_class(self.model, a, b, w):  # the decoder's class embedding, mixed
            return self.model.decode(z, torch.full((len(z),), a, dtype=torch.long))
