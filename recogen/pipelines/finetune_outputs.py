"""What a ``recogen generate finetune`` run writes besides its checkpoints: the adapters in diffusers'
format, or the whole pipeline folder; the before/after samples; the record (``finetune.json``)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .lora import LORA_FILE  # diffusers' default name: load_lora_weights(RUN) finds it

PIPELINE_DIR = "pipeline"
SAMPLE_GUIDANCE = 7.5  # text2img's default: `text2img --lora RUN` with the sample's prompt and seed redraws it


def write_lora(pipe, run: Path) -> Path:
    """The adapters in diffusers' format (``pytorch_lora_weights.safetensors``), written beside then
    renamed into place (a crash never leaves a half-written file)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    tmp = Path(tempfile.mkdtemp(prefix=".lora.", dir=run))
    try:
        type(pipe).save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
        os.replace(tmp / LORA_FILE, run / LORA_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return run / LORA_FILE


def write_pipeline(pipe, run: Path) -> Path:
    """The whole fine-tuned pipeline (``save_pretrained``) as ``RUN/pipeline``: written into a temporary
    folder, then swapped in by renames."""
    final, tmp, old = run / PIPELINE_DIR, run / f".{PIPELINE_DIR}.tmp", run / f".{PIPELINE_DIR}.old"
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    from .core import _quiet

    with _quiet():
        pipe.save_pretrained(tmp, safe_serialization=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def sample(pipe, cfg: dict[str, Any], size: tuple[int, int]):
    """The sample prompt drawn from seed ``cfg['seed']`` with the call ``text2img`` makes (same arguments,
    same CPU generator), so ``text2img --lora RUN`` with that prompt, seed and steps draws the same image."""
    import torch

    pipe.unet.eval()
    with torch.inference_mode():
        return pipe(prompt=cfg["sample_prompt"], negative_prompt=None, num_inference_steps=cfg["sample_steps"],
                    guidance_scale=SAMPLE_GUIDANCE, num_images_per_prompt=1,
                    generator=[torch.Generator("cpu").manual_seed(cfg["seed"])], width=size[0],
                    height=size[1]).images[0]


def save_png(img, path: Path) -> None:
    from ..utils import atomic_write

    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def record(cfg, ref, pipe, loop, params, start, fixed_before, fixed_after, seconds, load_seconds, total_seconds,
           device, wdtype, result, checkpoint: Path) -> dict[str, Any]:
    """The run's record: settings, losses (first/last steps, fixed-noise before/after), sizes, times, outputs."""
    import diffusers
    import peft
    import torch

    from .._version import __version__

    losses = loop.losses
    k = max(1, min(10, len(losses) // 4))  # the mean of a few steps: one step's loss is mostly sampling noise
    return {
        "task": "finetune", "model": ref, "pipeline": type(pipe).__name__, "method": cfg["method"],
        "rank": cfg["rank"] if cfg["method"] == "lora" else None, "data": cfg["data"], "images": cfg["images"],
        "captions": cfg["captions"], "size": cfg["size"], "steps": cfg["steps"], "resumed_from": start or None,
        "batch_size": cfg["batch_size"], "lr": cfg["lr"], "seed": cfg["seed"],
        "trainable_params": sum(p.numel() for _, p in params),
        "unet_params": sum(p.numel() for n, p in loop.unet.named_parameters() if "lora_" not in n),
        "loss_first": round(sum(losses[:k]) / k, 6), "loss_last": round(sum(losses[-k:]) / k, 6),
        "fixed_loss_before": round(fixed_before, 6), "fixed_loss_after": round(fixed_after, 6),
        "train_seconds": round(seconds, 3), "load_seconds": round(load_seconds, 3),
        "seconds": round(total_seconds, 3), "device": device, "dtype": wdtype,
        "lora": str(result.lora) if result.lora else None,
        "pipeline_folder": str(result.pipeline) if result.pipeline else None,
        "checkpoint": str(checkpoint), "samples": [str(p) for p in result.samples],
        "sample_prompt": cfg["sample_prompt"], "recogen": __version__, "diffusers": diffusers.__version__,
        "peft": peft.__version__, "torch": torch.__version__,
    }

