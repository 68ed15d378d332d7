"""The editor of each model family, and :func:`get_editor`, which picks the one of a loaded generator.

Importing this module imports every family module (:mod:`.vae`, :mod:`.gan`, :mod:`.diffusion`), and
each registers its :class:`~recogen.edit.base.Editor` in :data:`~recogen.edit.base.EDITORS`. The
family modules import :mod:`.base`; base imports none of them, so the arrows point one way.
"""
from __future__ import annotations

from typing import Any

from ..errors import ModelError
from . import diffusion, gan, vae  # noqa: F401 - each registers its editor
from .base import EDITORS, Editor

__all__ = ["EDITORS", "get_editor"]


def get_editor(gen, **opts: Any) -> Editor:
    """The editor of ``gen``'s family, with ``opts`` checked against the family's options."""
    from ..models import model_meta

    family = model_meta(gen.card["model"]).get("family")
    if family not in EDITORS.names():
        raise ModelError(f"{gen.card['model']} (family {family}) has no editor; edit works with runs of the "
                         f"families {', '.join(EDITORS.names())} (vae, dcgan, ddpm)")
    return EDITORS.get(family).fn(gen, **opts)
