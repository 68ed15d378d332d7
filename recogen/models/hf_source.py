"""``hf:ID_OR_DIR``: any Hugging Face image classifier (transformers ``AutoModelForImageClassification``),
by Hub id (through the Hub's own cache) or a local folder (``save_pretrained`` or ``hf download ID
--local-dir DIR``), registered as the ``hf`` row of :data:`recogen.models.sources.SOURCES`.

The transformers model is wrapped (:class:`HFClassifier`) so that it takes normalised pixels and returns a
logits tensor, as every recogen classifier does: the classify task then trains, evaluates, predicts and
exports it like a ``tv:``/``timm:`` model. ``--pretrained`` loads the published weights with a new head for
our classes (``num_labels`` + ``ignore_mismatched_sizes``); without it the architecture is built from its
``config.json`` with fresh weights, which is also how a trained run's portable weights are reloaded (so a
local folder reloads without network). Mean, std and input size come from ``preprocessor_config.json``.

Finding and checking the files reads JSON only: an id that is neither a folder nor cached fails offline in
well under a second, before transformers (about 10 s to import here) is loaded.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelError
from ..hub import hub_cache_dir, is_repo_id, libraries_offline, looks_like_path, require_model
from .parts import HEAD_ATTR, STEM_ATTR

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


@dataclass(frozen=True)
class HFRef:
    """Where an ``hf:`` model's files are: ``location`` is what ``from_pretrained`` gets (a folder or the
    id); ``local_only`` forbids the network (a folder, or offline with the id cached)."""

    ref: str
    location: str
    local_only: bool
    folder: Path | None  # the folder, or the cached snapshot holding config.json


def locate(ref: str) -> HFRef:
    """Resolve ``ref`` (a folder holding ``config.json``, or a Hub id) without loading anything; offline
    and not cached is an OfflineError naming the id and the command that fetches it."""
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / CONFIG).is_file():
            raise ModelError(f"hf:{ref} is not a transformers model folder (no {CONFIG} in it); pass a folder made by "
                             f"`save_pretrained` or `hf download ID --local-dir DIR`, or a Hub id such as "
                             f"google/vit-base-patch16-224")
        return HFRef(ref, str(path), True, path)
    if looks_like_path(ref):
        raise ModelError(f"no such folder: {ref}; pass --model hf:DIR (a transformers model folder) or hf:OWNER/NAME")
    if not is_repo_id(ref):
        raise ModelError(f"hf:{ref} is neither a folder nor a valid Hub id (owner/name)")
    local_only, cached = require_model(ref, CONFIG, instead="--model hf:DIR")
    return HFRef(ref, ref, local_only, cached.parent if cached else None)


def _json_file(r: HFRef, name: str) -> dict[str, Any] | None:
    """A JSON file of the model (None when it has none), from its folder or through the Hub cache."""
    if r.folder is not None and (r.folder / name).is_file():
        path: Path | None = r.folder / name
    elif r.local_only:
        path = None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = Path(hf_hub_download(r.location, name))
        except EntryNotFoundError:
            path = None
        except Exception as e:  # gated, missing repo, network gone: one line
            raise ModelError(f"cannot read {name} of hf:{r.ref} ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not readable JSON ({e}); copy the model folder again") from None


def _task(ref: str) -> str | None:
    """classify for an image classifier (or a backbone a classification head can go on); a model of
    another task (text, detection...) is a ModelError saying what it is."""
    path = Path(ref).expanduser()
    if path.is_absolute() and not path.exists():
        # a run's model folder that has moved: the run's card holds its config (see _portable), and the hf
        # source builds image classifiers only
        return "classify"
    config = _json_file(locate(ref), CONFIG) or {}
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    other = [a for a in archs if "For" in a and "ForImageClassification" not in a]
    if archs and len(other) == len(archs):
        raise ModelError(f"hf:{ref} is a {archs[0]}, not an image classifier; pass a model whose config names "
                         f"an ...ForImageClassification architecture (or a vision backbone such as ViTModel)")
    return "classify" if config.get("model_type") else None


def _names(pattern: str | None, pretrained: bool, task: str | None = None) -> list[str]:
    """The image classifiers in the Hub cache (what ``hf:ID`` loads offline)."""
    if task not in (None, "classify"):
        return []
    from huggingface_hub import constants

    found = set()
    for cfg in Path(constants.HF_HUB_CACHE).glob(f"models--*/snapshots/*/{CONFIG}"):
        try:
            archs = json.loads(cfg.read_text()).get("architectures") or []
        except (OSError, ValueError):
            continue
        if any(str(a).endswith("ForImageClassification") for a in archs):
            found.add(cfg.parents[2].name[len("models--"):].replace("--", "/"))
    return sorted(n for n in found if not pattern or fnmatch.fnmatchcase(n, pattern))


def _preprocessing(ref: str) -> dict[str, Any] | None:
    """Mean, std and input size from the model's image processor config; None when it has none."""
    p = _json_file(locate(ref), PREPROCESSOR)
    if not p or "image_mean" not in p or "image_std" not in p:
        return None
    pre: dict[str, Any] = {"mean": [float(v) for v in p["image_mean"]], "std": [float(v) for v in p["image_std"]]}
    size = p.get("crop_size") if p.get("do_center_crop") and p.get("crop_size") else p.get("size")
    if isinstance(size, dict):  # {"height", "width"} or {"shortest_edge"}
        size = size.get("height") or size.get("shortest_edge")
    if isinstance(size, int) and size > 0:
        pre["input_size"] = size
    return pre


def _cache_file(ref: str) -> Path:
    """The weights file ``--pretrained`` reads: in the folder, or in the Hub cache's snapshot."""
    r = locate(ref)
    if r.folder is not None:
        return next((r.folder / f for f in WEIGHT_FILES if (r.folder / f).is_file()), r.folder / WEIGHT_FILES[0])
    return hub_cache_dir(ref) / "snapshots" / "REVISION" / WEIGHT_FILES[0]


def _canonical(ref: str) -> str:
    """A local folder as an absolute path, so that a run's card finds it from any working directory."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.is_dir() else ref


class HFClassifier(nn.Module):
    """A transformers image classifier as a recogen classifier: ``forward(x)`` takes normalised pixels
    (N, C, H, W) and returns logits (N, classes). Grayscale input is repeated onto the model's RGB channels
    (the same as summing its first filters over RGB, as timm does for ``in_chans=1``); a ViT-like model
    whose input size differs from its config interpolates its position embeddings."""

    def __init__(self, net: nn.Module, in_chans: int):
        super().__init__()
        import inspect

        self.net = net
        self.in_chans = in_chans
        self.net_chans = int(getattr(net.config, "num_channels", 3) or 3)
        size = getattr(net.config, "image_size", None)
        self.native = tuple(size) if isinstance(size, (list, tuple)) else (size, size) if isinstance(size, int) else None
        self.interpolate = "interpolate_pos_encoding" in inspect.signature(net.forward).parameters

    def forward(self, x):
        if x.shape[1] != self.net_chans:
            x = x.expand(-1, self.net_chans, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        kw = {"interpolate_pos_encoding": True} if self.interpolate and tuple(x.shape[-2:]) != self.native else {}
        return self.net(pixel_values=x, **kw).logits


def _head_and_stem(net: nn.Module, num_classes: int) -> tuple[tuple[str, ...], str | None]:
    """The classifier head (the top-level children outside the base model that end in our classes) and
    the first convolution, as qualified names in the wrapper (``net.classifier``)."""
    base = getattr(net, "base_model_prefix", "")
    heads = tuple(f"net.{name}" for name, child in net.named_children() if name != base and any(
        isinstance(m, nn.Linear) and m.out_features == num_classes for m in child.modules()))
    stem = next((f"net.{q}" for q, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    return heads, stem


def _portable(model: Any) -> dict[str, Any]:
    """``{"hf_config": the built model's transformers config}``: a run's card keeps it, so the architecture
    is rebuilt from the card (its weights are the run's own) wherever the run goes."""
    net = getattr(model, "net", None)
    return {"hf_config": json.loads(net.config.to_json_string(use_diff=False))} if net is not None else {}


def _build(ref: str, *, num_classes: int, in_chans: int, image_size: int, pretrained: bool, **kw: Any) -> HFClassifier:
    saved = kw.pop("hf_config", None)
    if saved is not None and not pretrained:
        return _from_saved(saved, num_classes, in_chans)
    r = locate(ref)
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForImageClassification

    from .weights import fetch_pretrained

    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # the "newly initialized head" notice: a new head is the point
    transformers.logging.disable_progress_bar()  # a bar per tiny JSON and weights file; recogen prints its own lines
    try:
        with libraries_offline(r.local_only and r.folder is None):
            if pretrained:
                net = fetch_pretrained(
                    f"hf:{ref}", lambda: AutoModelForImageClassification.from_pretrained(
                        r.location, num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=r.local_only,
                        dtype=torch.float32, **kw),
                    str(_cache_file(ref)))
            else:
                config = AutoConfig.from_pretrained(r.location, num_labels=num_classes, local_files_only=r.local_only, **kw)
                net = AutoModelForImageClassification.from_config(config, dtype=torch.float32)
    except ValueError as e:  # "Unrecognized configuration class ... for AutoModelForImageClassification"
        raise ModelError(f"hf:{ref} cannot be built as an image classifier: {' '.join(str(e).split())[:200]}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    return _wrapped(net, num_classes, in_chans)


def _wrapped(net: nn.Module, num_classes: int, in_chans: int) -> HFClassifier:
    model = HFClassifier(net, in_chans).train()  # from_pretrained returns eval mode; recogen builds in train mode
    heads, stem = _head_and_stem(net, num_classes)
    setattr(model, HEAD_ATTR, heads)
    setattr(model, STEM_ATTR, stem)
    return model


def _from_saved(saved: dict[str, Any], num_classes: int, in_chans: int) -> HFClassifier:
    """The architecture of a run's card (its ``hf_config``), fresh weights: no model folder or network."""
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForImageClassification

    kind = saved.get("model_type")
    if kind not in CONFIG_MAPPING:
        raise ModelError(f"the run's model config is of type {kind!r}, which this transformers does not know; "
                         "install the transformers version the run was trained with")
    config = CONFIG_MAPPING[kind].from_dict(saved)
    config.num_labels = num_classes
    return _wrapped(AutoModelForImageClassification.from_config(config, dtype=torch.float32), num_classes, in_chans)
