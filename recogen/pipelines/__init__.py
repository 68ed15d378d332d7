"""Published diffusion models through diffusers: text to image, image to image and inpainting.

Each capability is a function in its own module, registered once in :mod:`.actions`, which the CLI
reads (``recogen generate text2img``, ``recogen edit img2img``, ``recogen edit inpaint``):

* :func:`text2img` - images from a prompt;
* :func:`img2img` - an image moved towards a prompt (SDEdit);
* :func:`inpaint` - the white region of a mask repainted from a prompt.
* :func:`finetune_pipeline` - a pipeline fine-tuned on a folder of images (LoRA adapters or the whole
  UNet; ``recogen generate finetune``), whose adapters the capabilities above load with ``lora=RUN``.

Models are Hub ids (through the Hub's own cache) or local pipeline folders (``save_pretrained`` or
``hf download ID --local-dir DIR``). :mod:`.hub` finds the files and fails fast offline;
:mod:`.device` picks device and precision and checks memory; :mod:`.core` loads, runs and writes.

>>> import recogen
>>> res = recogen.text2img("stable-diffusion-v1-5/stable-diffusion-v1-5", "a lighthouse at dusk", seed=3, out="lh.png")

Importing this package is instant: diffusers, transformers and torch load when a capability runs.
"""
from __future__ import annotations

from typing import Any

from .actions import CAPABILITIES

_LAZY = {"text2img": ".text_to_image", "img2img": ".image_to_image", "inpaint": ".inpainting",
         "PipelineResult": ".core", "load_pipeline": ".core", "finetune_pipeline": ".finetuning",
         "FinetuneResult": ".finetuning"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'recogen.pipelines' has no attribute {name!r}")


__all__ = ["CAPABILITIES", *_LAZY]
