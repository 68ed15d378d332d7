"""Foundation models without training, through transformers: zero-shot classification (CLIP family),
open-vocabulary detection (OWL-ViT, OWLv2) and promptable segmentation (SAM).

Each family is one module with its predictor class plus one line in the table (:mod:`.registry`),
which ``recogen TASK predict/eval --model PREFIX:ID_OR_DIR`` reads:

* ``clip:`` - :class:`~.clip.ZeroShotClassifier` (``recogen classify predict|eval --model clip:...``);
* ``owl:`` - :class:`~.owl.ZeroShotDetector` (``recogen detect predict --model owl:...``);
* ``sam:`` - :class:`~.sam.PromptSegmenter` (``recogen segment predict --model sam:...``).

Models are Hub ids (through the Hub's own cache) or local folders (``save_pretrained`` or
``hf download ID --local-dir DIR``); offline, a model that is not there fails at once, naming the
command that fetches it. Importing this package is instant: torch and transformers load with a model.

>>> import recogen
>>> recogen.zero_shot_classify("clip:openai/clip-vit-base-patch32", "cat.jpg", labels="cat,dog,car")
"""
from __future__ import annotations

from typing import Any

from .registry import ZERO_SHOT, ZeroShot, parse_model, register

__all__ = ["ZERO_SHOT", "ZeroShot", "load", "register", "zero_shot_classify", "zero_shot_detect", "zero_shot_segment"]


def load(model: str, task: str | None = None, device: str = "auto"):
    """The predictor of ``model`` (``PREFIX:ID_OR_DIR``, or a local folder whose ``config.json`` names
    its family); ``task``: refuse a family of another task. The last model loaded stays loaded."""
    entry, location = parse_model(model, task)
    return entry.load(location, device=device)


def zero_shot_classify(model: str, images: Any, labels: Any, prompt_template: str | None = None, topk: int = 5,
                       device: str = "auto"):
    """Classify ``images`` (one -> a dict, a list -> a list) among ``labels`` with a CLIP-family model,
    as ``recogen classify predict --model clip:ID_OR_DIR --labels ...``: label, index, prob, topk.

    >>> recogen.zero_shot_classify("clip:openai/clip-vit-base-patch32", "cat.jpg", "cat,dog,car")["label"]
    'cat'
    """
    return load(model, "classify", device).predict(images, labels=labels, prompt_template=prompt_template, topk=topk)


def zero_shot_detect(model: str, images: Any, labels: Any, score_threshold: float | None = None,
                     prompt_template: str | None = None, iou: float | None = None, max_det: int | None = None,
                     device: str = "auto"):
    """Boxes of the objects named by ``labels`` in ``images`` with OWL-ViT/OWLv2, as ``recogen detect
    predict --model owl:ID_OR_DIR --labels ...``: size and detections [{label, index, score, box}].

    >>> recogen.zero_shot_detect("owl:google/owlv2-base-patch16-ensemble", "room.jpg", "cat,remote")
    """
    return load(model, "detect", device).predict(images, labels=labels, prompt_template=prompt_template,
                                                  score_threshold=score_threshold, iou=iou, max_det=max_det)


def zero_shot_segment(model: str, images: Any, points: Any = None, boxes: Any = None, device: str = "auto"):
    """The mask of what ``points`` (``"x,y;x,y"``) or ``boxes`` (``"x0,y0,x1,y1;..."``) point at, with SAM,
    as ``recogen segment predict --model sam:ID_OR_DIR``: size, class_pixels, scores, mask (uint8 (H, W):
    0 background, k object k) and overlay.

    >>> r = recogen.zero_shot_segment("sam:facebook/sam-vit-base", "dog.jpg", points="320,240")
    """
    return load(model, "segment", device).predict(images, points=points, boxes=boxes)
