"""Tiny random-weight foundation models, built offline from configs (shared by tests/test_zero_shot.py
and tests/test_serve_zero_shot.py): a CLIP, an OWL-ViT and a SAM, the way transformers' own tests build
theirs (one-layer towers of width 16, and a CLIP tokenizer whose vocabulary is written here), saved with
``save_pretrained`` so that they load from folders with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline_fixtures import _byte_alphabet


def _tokenizer(folder: Path, max_length: int):
    """A CLIP tokenizer with one token per byte character (no merges) and its vocabulary."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_alphabet()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")  # no merges: one token per character
    return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length), vocab


def _text_config(vocab: dict, length: int) -> dict:
    return dict(vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"], hidden_size=16, intermediate_size=32, num_attention_heads=2,
                num_hidden_layers=1, max_position_embeddings=length)


VISION = dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1)


def tiny_foundation_models(root: Path) -> dict[str, str]:
    """Save a tiny CLIP, OWL-ViT and SAM under ``root``; returns {"clip", "owl", "sam"} -> folder."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, OwlViTConfig,
                              OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor, SamConfig, SamImageProcessor,
                              SamModel, SamProcessor)

    torch.manual_seed(0)
    tok, vocab = _tokenizer(root / "tok32", 32)
    clip = CLIPModel(CLIPConfig(text_config=_text_config(vocab, 32), vision_config=VISION, projection_dim=16))
    clip.save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(root / "clip")

    tok16, _ = _tokenizer(root / "tok16", 16)  # OWL-ViT pads every query to the text tower's length
    OwlViTForObjectDetection(OwlViTConfig(text_config=_text_config(vocab, 16), vision_config=VISION,
                                          projection_dim=16)).save_pretrained(root / "owl")
    OwlViTProcessor(image_processor=OwlViTImageProcessor(size={"height": 32, "width": 32},
                                                         crop_size={"height": 32, "width": 32}),
                    tokenizer=tok16).save_pretrained(root / "owl")

    SamModel(SamConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=64,
                           patch_size=8, output_channels=16, global_attn_indexes=[0], window_size=4, mlp_dim=32,
                           num_pos_feats=8),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                 iou_head_hidden_dim=16))).save_pretrained(root / "sam")
    SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                                   mask_size={"longest_edge": 16},
                                                   mask_pad_size={"height": 16, "width": 16})).save_pretrained(root / "sam")
    return {k: str(root / k) for k in ("clip", "owl", "sam")}


