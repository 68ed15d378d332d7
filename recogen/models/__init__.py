"""Model registry: ``create_model("resnet18", num_classes=10, in_chans=1, image_size=32)``.

Every builder is keyword-only, ``fn(*, num_classes, in_chans, image_size, pretrained, **kw)``, and is
registered with :func:`register_model`; duplicate names are an error (as in timm).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .catalog import MODELS, register_model

# One package per task; each package's __init__ imports its builder modules.
_BUILDER_PACKAGES = ("classifiers", "detectors", "segmenters", "generators")


def _load_builders() -> None:
    for pkg in _BUILDER_PACKAGES:
        importlib.import_module(f"{__name__}.{pkg}")


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    image_size: int = 32,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kwargs: Any,
):
    """Build a registered model, or a library model as ``tv:NAME`` / ``timm:NAME`` (models/sources.py: every
    classifier, and torchvision's detectors and segmenters);
    ``weights`` loads a local state dict (safetensors, .pt, Lightning .ckpt).

    >>> m = create_model("seed-cnn", num_classes=10, in_chans=1, image_size=28)
    >>> m = create_model("tv:mobilenet_v3_small", num_classes=10, in_chans=1, image_size=32)
    >>> m = create_model("tv:ssdlite320_mobilenet_v3_large", num_classes=3, in_chans=3, image_size=64)
    """
    from .sources import build_source_model, split_name

    if split_name(name) is not None:  # strict loading of library weights, the head replaced for our classes
        return build_source_model(name, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                                  pretrained=pretrained, weights=weights, **kwargs)
    _load_builders()
    entry = MODELS.get(name)
    model = entry.fn(num_classes=num_classes, in_chans=in_chans, image_size=image_size, pretrained=pretrained, **kwargs)
    if weights is not None:
        from .weights import load_weights_into

        load_weights_into(model, weights)
    return model


def list_models(task: str | None = None) -> list[tuple[str, str]]:
    """``(name, description)`` of registered models, optionally of one task."""
    _load_builders()
    where = {"task": task} if task else {}
    return [(n, MODELS.get(n).meta.get("description", "")) for n in MODELS.names(**where)]


def model_meta(name: str) -> dict[str, Any]:
    """The metadata a model was registered with (task, family, description, min_size...); a library
    model (``tv:NAME``/``timm:NAME``) has its task (classify; torchvision's detection and segmentation
    builders: detect, segment) and a description."""
    from .sources import source_task, split_name

    if split_name(name) is not None:
        return {"task": source_task(name), "description": f"{name.partition(':')[0]} library model"}
    _load_builders()
    return dict(MODELS.get(name).meta)


_NOUNS = {"classify": "classifier", "detect": "detector", "segment": "segmenter", "generate": "generator"}


def check_model_task(name: str, task: str) -> None:
    """A ModelError in one line when ``name`` (registered or ``tv:``/``timm:``) is not a model of ``task``,
    naming the command that trains it and the models of ``task``."""
    from .sources import TASK_WORDS

    own = model_meta(name).get("task")  # an unknown name is its own ModelError here
    if own == task:
        return
    noun = _NOUNS.get(task, f"{task} model")
    what = f"a {TASK_WORDS.get(own, own)} model" if own else "not a model of any task"
    choices = ", ".join(n for n, _ in list_models(task))
    if task in ("classify", "detect", "segment"):
        lib = "tv:NAME, timm:NAME or hf:ID" if task == "classify" else "tv:NAME"
        choices += f", or {lib} from `recogen models --source tv --task {task}`"
    run = f"train it with `recogen {own} train --model {name}`, or " if own else ""
    raise ModelError(f"--model {name} is {what}, not a {noun}: {run}choose a {noun}: {choices}")


__all__ = ["MODELS", "register_model", "create_model", "list_models", "model_meta", "check_model_task"]
