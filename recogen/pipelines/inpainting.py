"""Inpainting: repaint the white region of a mask from a prompt with ``AutoPipelineForInpainting``
(a dedicated inpainting checkpoint, or an ordinary text-to-image one, which diffusers blends in
latent space)."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError, DataError
from .core import (PipelineResult, check_common, check_size, check_strength_steps, fit_size, generate, input_name,
                   read_rgb)


def inpaint(model: str, image: Any, mask: Any, prompt: str, *, strength: float = 1.0, keep_unmasked: bool = True,
            negative_prompt: str | None = None, steps: int = 30, guidance: float = 7.5, seed: int = 0, n: int = 1,
            size: Any = None, out: Any = None, device: str = "auto", dtype: str = "auto",
            attention_slicing: bool = False, cpu_offload: bool = False, lora: Any = None,
            lora_scale: float = 1.0) -> PipelineResult:
    """``n`` fillings of the white part of ``mask`` (white = repaint, black = keep; same size as ``image``).

    The pipeline works in the autoencoder's latent space, so even the kept region comes back slightly
    changed by the decode; ``keep_unmasked`` (default) pastes the input's own pixels back outside the
    mask, so they are exactly the input's. ``strength`` 1 (default) repaints the region from noise;
    lower keeps some of what was there.

    >>> inpaint("stable-diffusion-v1-5/stable-diffusion-inpainting", "room.png", "sofa_mask.png", "a green sofa")
    """
    check_common(prompt, steps, guidance, n, seed)
    check_strength_steps(strength, steps)
    size = check_size(size)
    raw = read_rgb(image)
    init = fit_size(raw, size)
    fill = _read_mask(mask, raw.size, init.size)

    def paste_back(images: list) -> list:
        from PIL import Image

        return [Image.composite(im, init, fill) for im in images] if keep_unmasked else list(images)

    return generate("inpaint", model, prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
                    seed=seed, n=n, size=init.size, out=out, device=device, dtype=dtype,
                    attention_slicing=attention_slicing, cpu_offload=cpu_offload, lora=lora, lora_scale=lora_scale,
                    inputs={"image": input_name(image), "mask": input_name(mask), "strength": strength,
                            "denoise_steps": int(steps * strength), "keep_unmasked": bool(keep_unmasked),
                            "masked_fraction": _fraction(fill)},
                    call={"image": init, "mask_image": fill, "strength": strength}, post=paste_back)


def _read_mask(src: Any, image_size: tuple[int, int], size: tuple[int, int]):
    """The mask as a binary L image at ``size``: white (> 127) = repaint. A mask drawn for an image of
    another size is refused rather than stretched, and so is one that marks nothing."""
    from PIL import Image

    m = read_rgb(src, "mask").convert("L")
    if m.size != image_size:
        raise DataError(f"the mask is {m.width}x{m.height} but the image is {image_size[0]}x{image_size[1]}; "
                        "draw the mask on the image itself")
    m = m.point(lambda v: 255 if v > 127 else 0)
    if m.size != size:
        m = m.resize(size, Image.Resampling.NEAREST)  # nearest: the mask stays binary
    if m.getextrema()[1] == 0:
        raise ConfigError("the mask has no white pixels, so there is nothing to repaint (white = repaint, black = keep)")
    return m


def _fraction(mask) -> float:
    hist = mask.histogram()
    return round(hist[255] / max(1, sum(hist)), 4)
