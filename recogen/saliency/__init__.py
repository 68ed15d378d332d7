"""Explanations: where in an image a trained model looks for its answer (``recogen explain``).

The package is ``saliency``, not ``explain``: ``recogen.explain(...)`` is the public function, and a
subpackage of that name would replace it on ``recogen`` as soon as it was imported.

:func:`explain` runs a method on a run's predictions and returns one :class:`Explanation` per image
(map in [0, 1] at the model's input size, overlay at the image's size, top classes). The parts, each a
registry a new case is added to:

* :mod:`~recogen.saliency.methods` - method name -> function (grad-cam's CAMs, captum's attributions);
* :mod:`~recogen.saliency.layers` - architecture family -> default layer (and the ViT token reshape);
* :mod:`~recogen.saliency.targets` - task -> what a target is and how the output is scored;
* :mod:`~recogen.saliency.draw` / :mod:`~recogen.saliency.io` - the overlay, and the files written.

>>> import recogen
>>> ex = recogen.explain("runs/classify/shapes", ["a.png"], method="gradcam", out="explained/")
>>> ex[0].label, ex[0].map.shape, ex[0].files["overlay"]

Importing this package is instant: torch and the libraries load when an explanation runs.
"""
from __future__ import annotations

from typing import Any

_API = {"explain": "api", "Explanation": "result", "METHODS": "methods", "register_method": "methods",
        "register_family": "layers", "register_explainer": "targets"}


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module 'recogen.saliency' has no attribute {name!r}")


__all__ = list(_API)
