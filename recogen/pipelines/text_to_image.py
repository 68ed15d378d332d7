"""Text to image: a prompt through a diffusers pipeline (Stable Diffusion and the other families
``AutoPipelineForText2Image`` knows), by Hub id or local folder."""
from __future__ import annotations

from typing import Any

from .core import PipelineResult, check_common, check_size, generate


def text2img(model: str, prompt: str, *, negative_prompt: str | None = None, steps: int = 30, guidance: float = 7.5,
             seed: int = 0, n: int = 1, size: Any = None, out: Any = None, device: str = "auto", dtype: str = "auto",
             attention_slicing: bool = False, cpu_offload: bool = False, lora: Any = None,
             lora_scale: float = 1.0) -> PipelineResult:
    """``n`` images of ``prompt``; image k comes from seed ``seed + k``.

    ``size``: N or "WxH", multiples of 8 (default: the model's own size, 512 for Stable Diffusion 1.x).
    ``out``: NAME.png (``NAME_0.png``... when n > 1) or a folder; the record of the call goes beside
    the images as NAME.json (``params.json`` in a folder). Without ``out`` nothing is written.
    ``lora``: LoRA adapters loaded onto the model (a ``recogen generate finetune`` run folder or a
    ``.safetensors`` file) at strength ``lora_scale``.

    >>> res = text2img("stable-diffusion-v1-5/stable-diffusion-v1-5", "a red fox in snow", seed=1, out="fox.png")
    >>> res.images[0].size, res.paths, res.record["seconds"]
    """
    check_common(prompt, steps, guidance, n, seed)
    return generate("text2img", model, prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
                    seed=seed, n=n, size=check_size(size), out=out, device=device, dtype=dtype,
                    attention_slicing=attention_slicing, cpu_offload=cpu_offload, lora=lora, lora_scale=lora_scale)
