"""What an editor offers per family, the registry of editors, and the latent helpers they share.

An :class:`Editor` wraps a loaded generator (``recogen.load(RUN)``) and maps images (floats in
[0, 1], (N, C, H, W)) to latents and back. The operations in :mod:`recogen.edit.api` only call these
methods, so they never branch on the family; the family is read from the model's registration
(``recogen.models.model_meta(name)["family"]``).

The family modules register their editors in :data:`EDITORS` when imported; :mod:`recogen.edit.families`
imports them all and picks one (:func:`~recogen.edit.families.get_editor`). This module imports none of
them, so they can import it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..registry import Registry

EDITORS: Registry = Registry("editing family", error=ModelError)


def register_editor(family: str):
    """Class decorator: the editor of a model family (``vae``, ``gan``, ``diffusion``)."""
    return EDITORS.register(family)


class Editor:
    """Latent operations of one model family. Subclasses implement what their family can do.

    ``options`` names the keyword options the family takes (anything else is a ConfigError), with
    their defaults; each operation gets a seeded ``torch.Generator`` so results repeat exactly.
    """

    family: str = ""
    options: dict[str, Any] = {}
    zero_ok: tuple[str, ...] = ()  # integer options for which 0 is allowed (it turns the step off)

    def __init__(self, gen, **opts: Any):
        self.gen, self.model, self.card = gen, gen.model, gen.card
        unknown = sorted(k for k, v in opts.items() if k not in self.options and v is not None)
        if unknown:
            raise ConfigError(f"--{unknown[0].replace('_', '-')} does not apply to {self.card['model']} "
                              f"({self.family}); its editing options: "
                              + (", ".join("--" + k.replace("_", "-") for k in self.options) or "none"))
        self.opts = {**self.options, **{k: v for k, v in opts.items() if v is not None}}
        for k, default in self.options.items():  # counts: whole numbers from 1 (0 where it means "off")
            v, low = self.opts[k], 0 if k in self.zero_ok else 1
            if isinstance(default, int) and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ConfigError(f"--{k.replace('_', '-')} must be a whole number of at least {low}, got {v!r}")
        self.conditional = bool(getattr(self.model, "conditional", False))

    # --- latents -----------------------------------------------------------------------------------
    def invert(self, x: torch.Tensor, g: torch.Generator,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents that decode to ``x`` (as closely as the family allows), and the classes to decode
        them under (None for an unconditional model; chosen by the editor when ``labels`` is None)."""
        raise self._cannot("encode images")

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] for latents ``z``."""
        raise self._cannot("decode latents")

    def path(self, z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Latents along the way from ``z0`` to ``z1`` at fractions ``t`` (default: slerp)."""
        return slerp(z0, z1, t)

    # --- operations that differ per family ----------------------------------------------------------
    def vary(self, x: torch.Tensor, strength: float, n: int, g: torch.Generator) -> torch.Tensor:
        """``n`` variations of one image ``x`` (1, C, H, W)."""
        raise self._cannot("make variations")

    def inpaint(self, x: torch.Tensor, fill: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``x`` with the pixels where ``fill`` (1, 1, H, W bool) is True generated anew."""
        raise self._cannot("inpaint")

    def decode_between(self, z: torch.Tensor, a: int, b: int, w: float) -> torch.Tensor:
        """Conditional models: decode ``z`` with the class moved ``w`` of the way from ``a`` to ``b``."""
        raise self._cannot("mix classes")

    def _cannot(self, what: str) -> ModelError:
        return ModelError(f"{self.card['model']} ({self.family}) cannot {what}; use a vae, dcgan or ddpm run")


# ----------------------------------------------------------------------------------------- helpers
def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per sample (White 2016), (N, ...) x (N, ...) x (K,) -> (K, N, ...).

    A Gaussian latent in d dimensions lies near the sphere of radius sqrt(d); a straight line
    between two such points passes well inside it, where the decoder saw few latents during
    training (blurred, washed-out midpoints). Slerp follows the great circle instead; its ends are
    ``z0`` and ``z1`` exactly, and it falls back to a straight line for (nearly) parallel vectors.
    """
    a, b = z0.flatten(1), z1.flatten(1)
    cos = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).clamp(-1, 1)
    theta = torch.acos(cos)[None, :, None]  # (1, N, 1)
    tt = t.to(a.dtype)[:, None, None]  # (K, 1, 1)
    sin = torch.sin(theta)
    near = sin.abs() < 1e-4
    w0 = torch.where(near, 1 - tt, torch.sin((1 - tt) * theta) / sin.where(~near, torch.ones_like(sin)))
    w1 = torch.where(near, tt, torch.sin(tt * theta) / sin.where(~near, torch.ones_like(sin)))
    out = w0 * a[None] + w1 * b[None]
    return out.view(len(t), *z0.shape)


def prior_mix(z: torch.Tensor, eps: torch.Tensor, strength: float) -> torch.Tensor:
    """``cos(s pi/2) z + sin(s pi/2) eps``: 0 keeps ``z``, 1 is the fresh prior sample ``eps``.

    The weights' squares sum to 1, so a mix of N(0, I) latents is N(0, I) at every strength.
    """
    angle = torch.tensor(float(strength) * torch.pi / 2)
    return torch.cos(angle) * z + torch.sin(angle) * eps


@contextlib.contextmanager
def frozen(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode with no gradients into its weights (latent search optimises z only)."""
    flags = [p.requires_grad for p in net.parameters()]
    was = net.training
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p, f in zip(net.parameters(), flags):
            p.requires_grad_(f)
        net.train(was)


class _MixedEmbedding(nn.Module):
    """Stands in for a class embedding: every label maps to ``(1 - w) * E[a] + w * E[b]``."""

    def __init__(self, embed: nn.Module, a: int, b: int, w: float):
        super().__init__()
        with torch.no_grad():
            e = embed(torch.tensor([a, b]))
        self.vec = (1 - w) * e[0] + w * e[1]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.vec.to(y.device).expand(len(y), -1)


@contextlib.contextmanager
def mixed_class(owner: nn.Module, a: int, b: int, w: float, attr: str = "embed") -> Iterator[None]:
    """Temporarily replace ``owner.<attr>`` (a class embedding) by the mix of classes ``a`` and ``b``.

    The generators take a class only through that embedding, so a mix of two rows moves an image
    between classes continuously (``w`` 0 = class a, 1 = class b) without touching their code.
    """
    orig = owner._modules[attr]
    owner._modules[attr] = _MixedEmbedding(orig, a, b, w)
    try:
        yield
    finally:
        owner._modules[attr] = orig


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> floats in [0, 1]."""
    return images.float() / 255


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] -> uint8 (rounded, clamped), on the CPU."""
    return x.detach().mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu()
