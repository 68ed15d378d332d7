"""The table of pipeline capabilities: one :class:`Capability` per capability, registered once.

The CLI (:mod:`.cli`) builds every ``recogen generate ...`` / ``recogen edit ...`` action of a
pipeline from this table, ``recogen`` exposes each ``function``, and the service
(:mod:`recogen.serve.pipelines`) gives each ``serve=True`` capability its REST endpoint and web-page
form; a new capability is one module with its function plus one :func:`register` line here.
Importing this module imports nothing heavy.
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
    (None: it has none); ``summary``: what the CLI prints about a result, from its record;
    ``serve``: ``recogen serve --pipeline`` answers it at ``POST /v1/pipelines/{model}/{name}`` and the
    web page gets a form for it (:mod:`recogen.serve.pipelines`; its parameters are the CLI's, from
    the fields above). Off by default: an action such as training does not belong in a request.
    ``lora``: its CLI action takes ``--lora RUN`` and ``--lora-scale`` (adapters loaded onto the model;
    a local path, so not a service parameter); ``cli``: ``"module:name"`` of a function
    ``(subparsers, capability)`` that adds the capability's own CLI action, for one whose options are
    not those of an image call (``finetune``); the module must import nothing heavy."""

    name: str
    group: str
    help: str
    function: str
    image: bool = False
    mask: bool = False
    strength: float | None = None
    summary: Callable[[dict[str, Any]], str] = lambda r: ""
    serve: bool = False
    lora: bool = False
    cli: str | None = None

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
                    "recogen.pipelines.text_to_image:text2img", serve=True, lora=True))
register(Capability("img2img", "edit", "move an image towards a text prompt with a diffusers pipeline (SDEdit)",
                    "recogen.pipelines.image_to_image:img2img", image=True, strength=0.6,
                    summary=lambda r: f", strength {r['strength']:g}", serve=True, lora=True))
register(Capability("inpaint", "edit", "repaint the white region of a mask from a prompt with a diffusers pipeline",
                    "recogen.pipelines.inpainting:inpaint", image=True, mask=True, strength=1.0,
                    summary=lambda r: f", repainted {r['masked_fraction']:.0%} of the image", serve=True,
                    lora=True))
register(Capability("finetune", "generate", "fine-tune a diffusers pipeline on a folder of images (LoRA or full UNet)",
                    "recogen.pipelines.finetuning:finetune_pipeline", cli="recogen.pipelines.finetune_cli:add_action"))
