"""The served models: each run loaded once, named, locked, and the per-task handlers that answer requests.

A handler turns (predictor, decoded image, validated params) into the same JSON as
``recogen TASK predict --json`` gives for one image (without "path": the image came over HTTP).
Adding a task is one entry in :data:`HANDLERS` (and its params model in ``params.py``), and
optionally one in :data:`PREPARE`.

The service runs ``PREPARE[task]`` outside the model's lock and only the handler under it, so that
one client's large image is converted and resized while other clients' forward passes run.
"""
from __future__ import annotations

import base64
import copy
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import RunError


@dataclass
class Served:
    """One loaded run. ``lock`` serialises its predictions: a predictor is not safe to share between
    threads (the detector sets its thresholds on the model for the length of a call)."""

    name: str
    task: str
    predictor: Any
    backend: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models`` lists for this model."""
        card = self.predictor.card
        out = {"name": self.name, "task": self.task, "model": card.get("model"), "classes": list(card["classes"]),
               "image_size": card.get("image_size"), "channels": card.get("in_chans"), "backend": self.backend}
        if self.task == "generate":
            out["conditional"] = bool(card.get("conditional"))
        return out


def _b64_png(array) -> str:
    from ..data.images import encode_png as png_bytes

    return base64.b64encode(png_bytes(array)).decode("ascii")


def classify_handler(pred, image, p) -> dict[str, Any]:
    return pred.predict(image, topk=p.topk)


def detect_handler(pred, image, p) -> dict[str, Any]:
    return pred.predict(image, conf=p.conf, iou=p.iou, max_det=p.max_det)


def segment_handler(pred, image, p) -> dict[str, Any]:
    """The CLI's fields (size, class_pixels); with ``mask=true`` also the class mask (a palette PNG whose
    pixel values are class indices) and the colour overlay, both base64 PNGs at the image's size."""
    import numpy as np
    from PIL import Image

    from ..tasks.segment import palette

    r = pred.predict(image, alpha=p.alpha)
    out = {"size": r["size"], "class_pixels": r["class_pixels"]}
    if p.mask:
        m = Image.fromarray(np.ascontiguousarray(r["mask"], dtype=np.uint8), mode="L").convert("P")
        m.putpalette(palette().ravel().tolist())
        out["mask_png"] = _b64_png(m)
        out["overlay_png"] = _b64_png(r["overlay"])
    return out


# task -> handler(predictor, PIL image, params) -> JSON-able dict
HANDLERS: dict[str, Callable[[Any, Any, Any], dict[str, Any]]] = {
    "classify": classify_handler,
    "detect": detect_handler,
    "segment": segment_handler,
}


def _with_input(pred, method: str, value: Any):
    """A shallow copy of ``pred`` (the same model and card) whose ``method`` returns ``value``, computed
    beforehand: its ``predict`` then gives exactly what ``pred.predict`` gives, without that step."""
    view = copy.copy(pred)
    setattr(view, method, lambda *args, **kwargs: value)
    return view


def classify_prepare(pred, image) -> tuple[Any, Any]:
    """Convert and resize to the model's input (``Classifier.preprocess``) outside the lock."""
    return _with_input(pred, "preprocess", pred.preprocess([image])), image


def detect_prepare(pred, image) -> tuple[Any, Any]:
    """Convert and resize to the model's input (``Detector.preprocess``, which also keeps the image's
    size for the boxes) outside the lock."""
    return _with_input(pred, "preprocess", pred.preprocess(image)), image


def segment_prepare(pred, image) -> tuple[Any, Any]:
    """Convert and resize to the model's input outside the lock; the mask still comes back at the
    image's own size (``Segmenter.predict`` takes that from the image)."""
    from ..tasks.segment import _fit_images

    return _with_input(pred, "_tensor", _fit_images(pred._tensor(image), pred.card)), image


# task -> prepare(predictor, PIL image) -> (predictor, image) for its handler; run outside the model's lock
PREPARE: dict[str, Callable[[Any, Any], tuple[Any, Any]]] = {
    "classify": classify_prepare,
    "detect": detect_prepare,
    "segment": segment_prepare,
}
GENERATIVE = ("generate",)


def _unique_name(path: Path, task: str, taken: set[str]) -> str:
    """The run folder's name; on a clash ``name-task``, then ``name-task-2``..."""
    base = path.name if path.is_dir() else path.parent.name
    name, k = base, 2
    if name in taken:
        name = f"{base}-{task}"
    while name in taken:
        name, k = f"{base}-{task}-{k}", k + 1
    return name


def load_models(runs: list[str | Path], backend: str = "torch", device: str = "cpu") -> dict[str, Served]:
    """Load every run once; returns name -> :class:`Served` in the order given.

    Generators have no export, so they always run with torch (their ``backend`` says so).
    """
    import recogen
    from ..artifact import read_card

    if not runs:
        raise RunError("give at least one run folder to serve (e.g. recogen serve runs/classify/digits)")
    served: dict[str, Served] = {}
    for run in runs:
        task = read_card(run)["task"]
        if task not in HANDLERS and task not in GENERATIVE:
            raise RunError(f"{run} holds a {task} model, which the service cannot serve yet")
        b = "torch" if task in GENERATIVE else backend
        pred = recogen.load(run, device=device, backend=b)
        name = _unique_name(Path(run).expanduser(), task, set(served))
        served[name] = Served(name, task, pred, b)
    return served
