"""Image to image (SDEdit): an input image noised to ``strength`` and denoised towards a prompt,
with ``AutoPipelineForImage2Image``."""
from __future__ import annotations

from typing import Any

from .core import (PipelineResult, check_common, check_size, check_strength_steps, fit_size, generate, input_name,
                   read_rgb)


def img2img(model: str, image: Any, prompt: str, *, strength: float = 0.6, negative_prompt: str | None = None,
            steps: int = 30, guidance: float = 7.5, seed: int = 0, n: int = 1, size: Any = None, out: Any = None,
            device: str = "auto", dtype: str = "auto", attention_slicing: bool = False,
            cpu_offload: bool = False, lora: Any = None, lora_scale: float = 1.0) -> PipelineResult:
    """``n`` versions of ``image`` moved towards ``prompt``.

    ``strength`` (0 to 1]: how much noise is added, so how far the result may move (1: the image is
    only a starting point); the pipeline runs about ``steps * strength`` steps, at least one.
    ``size``: the working size (default: the image's, rounded down to multiples of 8).

    >>> img2img("stable-diffusion-v1-5/stable-diffusion-v1-5", "sketch.png", "a watercolour castle", strength=0.5)
    """
    check_common(prompt, steps, guidance, n, seed)
    size = check_size(size)
    init = fit_size(read_rgb(image), size)
    check_strength_steps(strength, steps)
    return generate("img2img", model, prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
                    seed=seed, n=n, size=init.size, out=out, device=device, dtype=dtype,
                    attention_slicing=attention_slicing, cpu_offload=cpu_offload, lora=lora, lora_scale=lora_scale,
                    inputs={"image": input_name(image), "strength": strength, "denoise_steps": int(steps * strength)},
                    call={"image": init, "strength": strength})

