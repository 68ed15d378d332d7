"""The table of pipeline capabilities: one :class:`Capability` per capability, registered once.

The CLI (:mod:`.cli`) builds every ``recogen generate ...`` / ``recogen edit ...`` action of a
pipeline from this table, and ``recogen`` exposes each ``function``; a new capability is one module
with its function plus one :func:`register` line here. Importing this module imports nothing heavy.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Capability:
    """One capability. ``group``: the command its CLI action joins (``generate`` or ``edit``);
    ``function``: ``"module:name"`` of its Python function; ``image``/``mask``: whether it reads an
    input image (a positional argument) and a ``--mask``; ``strength``: its default ``--strength``
    (None: it has none); ``summary``: what the CLI prints about a result, from its record."""

    name: str
    group: str
    help: str
    function: str
    image: bool = False
    mask: bool = False
    strength: float | None = None
    summary: Callable[[dict[str, Any]], str] = lambda r: ""

    def load(self) -> Callable[..., Any]:
        """The capability's function (imports its module: diffusers and torch come with it)."""
        mod, _, attr = self.function.partition(":")
        return getattr(importlib.import_module(mod), attr)


CAPABILITIES: dict[str, Capability] = {}


def register(cap: Capability) -> Capability:
    if cap.name in CAPABILITIES:
        raise ValueError(f"pipeline capability {cap.name!r} is registered twice")
    CAPABILITIES[cap.name] = cap
    return cap


def in_group(group: str) -> list[Capability]:
    return [c for c in CAPABILITIES.values() if c.group == group]


register(Capability("text2img", "generate", "images from a text prompt with a diffusers pipeline (Hub id or folder)",
                    "recogen.pipelines.text_to_image:text2img"))
register(Capability("img2img", "edit", "move an image towards a text prompt with a diffusers pipeline (SDEdit)",
                    "recogen.pipelines.image_to_image:img2img", image=True, strength=0.6,
                    summary=lambda r: f", strength {r['strength']:g}"))
register(Capability("inpaint", "edit", "repaint the white region of a mask from a prompt with a diffusers pipeline",
                    "recogen.pipelines.inpainting:inpaint", image=True, mask=True, strength=1.0,
                    summary=lambda r: f", repainted {r['masked_fraction']:.0%} of the image"))
