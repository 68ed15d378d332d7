"""Loading pretrained and local weights, offline-honest."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError, OfflineError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, a plain .pt/.pth, or a Lightning checkpoint (never unpickles code)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"weights file not found: {p}; pass an existing .safetensors, .pt or .ckpt file to --weights")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read weights {p}: {type(e).__name__}: {str(e)[:120]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # Lightning checkpoint; our module keeps the network under "model."
        if any(k.startswith("model.") for k in sd):
            sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{p} does not hold a state dict of tensors")
    return sd


def load_weights_into(model: nn.Module, path: str | Path) -> None:
    """Load matching tensors from ``path``; tensors whose shape differs (a new head) are skipped with a warning."""
    sd = read_state_dict(path)
    own = model.state_dict()
    keep = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if not keep:
        raise ModelError(f"no tensor in {path} matches this model's layers; is it weights for another architecture?")
    skipped = sorted(set(own) - set(keep))
    if skipped:
        warnings.warn(f"{len(skipped)} tensors not loaded from {path} (new or reshaped): {', '.join(skipped[:4])}...")
    model.load_state_dict(keep, strict=False)


def fetch_pretrained(what: str, fetch: Callable[[], object], cache_hint: str) -> object:
    """Call ``fetch`` (a library's own download-through-cache loader); offline becomes one clear line."""
    try:
        return fetch()
    except Exception as e:  # URLError, OSError, huggingface_hub's LocalEntryNotFoundError...
        raise OfflineError(
            f"could not load pretrained weights for {what} ({type(e).__name__}). Offline, place the file in "
            f"{cache_hint}, or pass --weights PATH to a local file."
        ) from None
