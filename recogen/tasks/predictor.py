"""The one Predictor base: loading a run (torch or ONNX backend), the task check, evaluation of the run it
came from, and the one-image-or-a-list convention every task's ``predict`` follows."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

from ..errors import RunError


class Predictor:
    """A trained model ready to predict; subclasses set :attr:`task` and write ``predict``.

    Get one with ``recogen.load(RUN)``. ``model`` is the network (or an onnxruntime wrapper), ``card``
    the run's model card (read once, passed down), ``path`` the run folder it came from, if any.
    """

    task: str = ""

    def __init__(self, model: Any, card: dict[str, Any], path: Path | None = None):
        self.model, self.card, self.path = model, card, path
        self.classes: list[str] = card["classes"]

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", backend: str = "torch", card: dict[str, Any] | None = None):
        """Load from a run folder or a ``model.json``; ``backend="onnx"`` runs the run's ONNX export
        (``recogen export RUN``) with onnxruntime. ``card``: the run's card if the caller read it already."""
        from ..export import load_backend
        from . import get_task

        model, card = load_backend(path, device, backend, card)
        if card.get("task") != cls.task:
            raise RunError(f"{path} holds a {card.get('task')} model, not a {get_task(cls.task).noun}")
        p = Path(path)
        return cls(model, card, p if p.is_dir() else p.parent)

    def evaluate(self, data: str | None = None, split: str | None = None) -> dict[str, Any]:
        """Evaluate on the run's data (or ``data``) without writing files; see ``recogen TASK eval``."""
        from . import get_task

        if self.path is None:
            raise RunError(f"this {get_task(self.task).noun} was not loaded from a run folder; pass data explicitly to evaluate()")
        return get_task(self.task).evaluate(self.path, data=data, split=split, write=False)

    def prepared(self, **values: Any) -> "Predictor":
        """A shallow copy (same model and card) whose named methods return the given precomputed values:
        the service runs decoding and resizing outside the model's lock, then ``predict`` on this view."""
        view = copy.copy(self)
        for name, value in values.items():
            setattr(view, name, lambda *args, _value=value, **kwargs: _value)
        return view

    @staticmethod
    def each(images: Any, predict_batch: Callable[[list], list[dict[str, Any]]]):
        """Run ``predict_batch`` on one image (returns a dict) or a list/tuple (returns a list). A result
        of an image given as a path starts with its ``"path"``."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        results = [{"path": str(src), **r} if isinstance(src, (str, Path)) else r
                   for src, r in zip(batch, predict_batch(batch))]
        return results[0] if single else results
