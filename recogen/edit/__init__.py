"""Editing images with a trained generator.

Four operations, each on a run of ``recogen generate train`` and each written as a result PNG plus a
before/after strip (``*_strip.png``):

* :func:`interpolate` - a path in latent space between two images;
* :func:`inpaint` - fill the white region of a mask;
* :func:`vary` - variations of an image at a chosen strength;
* :func:`attribute` - latent arithmetic along the direction from one labelled group to another.

How each family reaches a latent (VAE: encoder means; GAN: latent search; diffusion: DDIM inversion)
lives in one :class:`~recogen.edit.base.Editor` per family, registered by family name
(:mod:`recogen.edit.families`).

>>> import recogen.edit
>>> res = recogen.edit.interpolate("runs/generate/vae", "a.png", "b.png", steps=8, out="ab.png")
>>> res.images.shape, res.path, res.strip

Importing this package is instant: torch is loaded when an operation runs.
"""
from __future__ import annotations

from typing import Any

_API = ("interpolate", "inpaint", "vary", "attribute", "EditResult")


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'recogen.edit' has no attribute {name!r}")


__all__ = list(_API)
