"""The tiny random-weight Stable Diffusion pipeline the pipeline tests share (text2img, img2img, inpaint,
the REST endpoints, fine-tuning): built from configs the way diffusers' own tests build theirs (a small
UNet2DConditionModel, AutoencoderKL and CLIPTextModel, and a CLIP tokenizer whose vocabulary is written
here: byte-level characters only, no merges), and saved with ``save_pretrained``. About 50k parameters;
32 px images in 2 steps take milliseconds.

>>> from pipeline_fixtures import build_tiny_pipeline
>>> folder = build_tiny_pipeline(tmp_path / "tiny-sd")
"""
from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2, CLIP) uses for the 256 byte values."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def build_tiny_pipeline(folder: Path) -> Path:
    """A random-weight Stable Diffusion pipeline of about 50k parameters, saved in ``folder``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = folder.parent / "tokenizer_src"
    tok_dir.mkdir(parents=True, exist_ok=True)
    chars = _byte_alphabet()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tok_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")  # no merges: one token per character
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=16)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, norm_num_groups=2, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], hidden_size=8, intermediate_size=16, num_attention_heads=2,
        num_hidden_layers=2, max_position_embeddings=16, projection_dim=8))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


@functools.cache
def tiny_pipeline_dir() -> Path:
    """One tiny pipeline folder per test process (building it takes seconds), removed at exit; tests
    that share it must not write into it."""
    root = Path(tempfile.mkdtemp(prefix="recogen-tiny-sd-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return build_tiny_pipeline(root / "tiny-sd")
