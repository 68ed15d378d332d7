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
    return strip_compiled_prefix(sd)


def strip_compiled_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without torch.compile's ``_orig_mod.`` (a state dict saved from ``torch.compile(model)``, e.g.
    by another tool: recogen's ``--compile`` compiles in place and saves the plain keys)."""
    if not any("_orig_mod." in k for k in sd):
        return sd
    return {k.replace("_orig_mod.", ""): v for k, v in sd.items()}


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


def load_backbone_strict(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Load a library state dict into ``model`` (a ``tv:``/``timm:`` model) strictly, except its head
    (a classifier's output layer, a detector's class head, a segmenter's final 1x1 convolutions).

    Every backbone key must be present with the same shape, and nothing else may be there: a file of
    another architecture is refused in one line naming the missing and unexpected keys. The classifier
    head (the model's ``recogen_head`` modules) is loaded only when its shape fits our classes; otherwise
    it keeps its fresh initialisation. A 3-channel first conv is folded onto 1 channel (or repeated onto
    more) as timm does for ``in_chans``, so ImageNet filters serve grayscale images.
    """
    from .parts import HEAD_ATTR, STEM_ATTR

    heads = tuple(f"{h}." for h in getattr(model, HEAD_ATTR, ()))
    stem = getattr(model, STEM_ATTR, None)
    own = model.state_dict()
    is_head = lambda k: k.startswith(heads)  # noqa: E731
    # BatchNorm counters may be absent: torchvision saved its detectors from FrozenBatchNorm2d, which has none.
    missing = sorted(k for k in own if not is_head(k) and k not in sd and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in sd if not is_head(k) and k not in own)
    if missing or unexpected:
        raise ModelError(
            f"{what} does not fit {getattr(model, 'recogen_source', type(model).__name__)}: "
            f"{len(missing)} missing keys ({', '.join(missing[:3]) or '-'}), "
            f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3]) or '-'}); pass weights of this architecture")
    keep: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if is_head(k):
            if own[k].shape == v.shape:  # same number of classes: keep the trained head
                keep[k] = v
            continue
        if stem and k == f"{stem}.weight" and v.ndim == 4 and v.shape[1] != own[k].shape[1]:
            from timm.models import adapt_input_conv

            v = adapt_input_conv(own[k].shape[1], v)  # sum the RGB filters (1 channel) or repeat them
        if own[k].shape != v.shape:
            raise ModelError(f"{what} does not fit {getattr(model, 'recogen_source', type(model).__name__)}: "
                             f"{k} has shape {tuple(v.shape)}, the model wants {tuple(own[k].shape)}")
        keep[k] = v
    model.load_state_dict(keep, strict=False)
