"""Augmentation presets (none / light / strong) and their two implementations.

A preset is one set of numbers. :func:`to_v2` turns it into a torchvision ``transforms.v2`` pipeline
for one image at a time (decoded files, and the box/mask-aware tasks). :class:`BatchAugment` applies
the same preset to a whole in-memory batch with *per-sample* random parameters in one
``affine_grid``/``grid_sample`` call: v2 draws one set of parameters per call, so applying it image
by image costs about 1.3 ms per 28 px image here, slower than the training step itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class AugmentPreset:
    degrees: float = 0.0  # max absolute rotation
    translate: float = 0.0  # max shift, fraction of the image side
    scale: tuple[float, float] = (1.0, 1.0)
    hflip: bool = False  # only applied when the data set allows it (not for digits)
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    erase_p: float = 0.0  # random erasing probability

    @property
    def is_identity(self) -> bool:
        return self == AugmentPreset()


PRESETS: dict[str, AugmentPreset] = {
    "none": AugmentPreset(),
    "light": AugmentPreset(degrees=10, translate=0.1, scale=(0.9, 1.1), hflip=True),
    "strong": AugmentPreset(degrees=15, translate=0.125, scale=(0.8, 1.2), hflip=True,
                            brightness=0.3, contrast=0.3, saturation=0.3, erase_p=0.25),
}


def get_preset(name: str) -> AugmentPreset:
    """Return the named preset; an unknown name is a ConfigError listing the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown --augment {name!r}; choose one of {', '.join(PRESETS)}") from None


def to_v2(preset: AugmentPreset, hflip_ok: bool = True):
    """The preset as a per-image torchvision ``transforms.v2`` pipeline (uint8 or float tensors, PIL)."""
    from torchvision.transforms import v2

    t: list = []
    if preset.degrees or preset.translate or preset.scale != (1.0, 1.0):
        t.append(v2.RandomAffine(degrees=preset.degrees, translate=(preset.translate,) * 2, scale=preset.scale))
    if preset.hflip and hflip_ok:
        t.append(v2.RandomHorizontalFlip())
    if preset.brightness or preset.contrast or preset.saturation:
        t.append(v2.ColorJitter(preset.brightness, preset.contrast, preset.saturation))
    if preset.erase_p:
        t += [v2.ToDtype(torch.float32, scale=True), v2.RandomErasing(p=preset.erase_p)]
    return v2.Compose(t)


class BatchAugment(nn.Module):
    """Apply a preset to a float batch in [0, 1] (B, C, H, W), drawing parameters per sample."""

    def __init__(self, preset: AugmentPreset, hflip_ok: bool = True):
        super().__init__()
        self.p = preset
        self.hflip = preset.hflip and hflip_ok

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, b, dev = self.p, x.shape[0], x.device
        u = lambda lo, hi: torch.empty(b, device=dev).uniform_(lo, hi)  # noqa: E731
        if p.degrees or p.translate or p.scale != (1.0, 1.0) or self.hflip:
            ang = u(-p.degrees, p.degrees) * (math.pi / 180)
            s = u(*p.scale)
            flip = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0) if self.hflip else torch.ones(b, device=dev)
            # theta maps output to input coordinates (normalised [-1, 1]), so invert scale and rotation.
            cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
            theta = torch.stack([
                torch.stack([cos * flip, -sin, u(-2 * p.translate, 2 * p.translate)], 1),
                torch.stack([sin * flip, cos, u(-2 * p.translate, 2 * p.translate)], 1),
            ], 1)
            grid = nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if p.brightness or p.contrast or (p.saturation and x.shape[1] == 3):
            x = self._jitter(x, u)
        if p.erase_p:
            x = self._erase(x)
        return x

    def _jitter(self, x, u):
        p = self.p
        if p.brightness:
            x = x * u(1 - p.brightness, 1 + p.brightness).view(-1, 1, 1, 1)
        if p.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * u(1 - p.contrast, 1 + p.contrast).view(-1, 1, 1, 1) + mean
        if p.saturation and x.shape[1] == 3:
            gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            x = (x - gray) * u(1 - p.saturation, 1 + p.saturation).view(-1, 1, 1, 1) + gray
        return x.clamp_(0, 1)

    def _erase(self, x):
        b, _, h, w = x.shape
        dev = x.device
        # One rectangle per chosen image, 2-25% of the area (RandomErasing's default range).
        area = torch.empty(b, device=dev).uniform_(0.02, 0.25)
        ratio = torch.exp(torch.empty(b, device=dev).uniform_(math.log(0.3), math.log(3.3)))
        eh = (torch.sqrt(area * ratio) * h).clamp(1, h)
        ew = (torch.sqrt(area / ratio) * w).clamp(1, w)
        y0 = torch.rand(b, device=dev) * (h - eh)
        x0 = torch.rand(b, device=dev) * (w - ew)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        box = (ys >= y0.view(-1, 1, 1)) & (ys < (y0 + eh).view(-1, 1, 1)) & (xs >= x0.view(-1, 1, 1)) & (xs < (x0 + ew).view(-1, 1, 1))
        box &= (torch.rand(b, device=dev) < self.p.erase_p).view(-1, 1, 1)
        return torch.where(box.unsqueeze(1), torch.rand_like(x), x)
