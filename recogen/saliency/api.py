"""``explain``: saliency maps of a trained run's predictions (the CLI's ``recogen explain`` calls this).

One call loads the run once, reads every image first (a bad file stops it before any model work), then
for each image: one forward pass (top classes, the target), the method's map at the model's input size
scaled to [0, 1], and an overlay on the image at its own size. The same inputs give the same maps.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from .draw import as_rgb, overlay, resize_map, unit_range
from .layers import Layer, family_of, resolve_layer, spatial_check
from .methods import Job, Method, get_method
from .result import Explanation
from .targets import Choice, TaskExplainer, get_explainer, normalise

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

INPUT = "input"  # the "layer" of attribution methods, which attribute the input pixels


def explain(run: Any, images: Any, method: str = "gradcam", target: Any = None, layer: str | None = None,
            out: str | Path | None = None, device: str = "cpu", *,
            explainable: "nn.Module | None" = None) -> list[Explanation]:
    """Explain a run's predictions on ``images`` with ``method``; returns one :class:`Explanation` each.

    ``run``: a run folder, a ``model.json`` or a loaded predictor (``recogen.load(RUN)``); classification
    runs so far. ``images``: one image or a list (paths, bytes, PIL images, uint8 arrays), read as
    ``predict`` reads them. ``method``: gradcam, gradcam++, eigencam, scorecam or integrated-gradients.
    ``target``: the class to explain (index or name; default each image's top class). ``layer``: a
    module name of ``model.named_modules()`` (default: the architecture family's, e.g. the last conv
    stage). ``out``: a folder to write ``NAME.METHOD.png`` (overlay) and ``NAME.METHOD.npy`` (map) into.
    ``explainable``: the predictor's network as :func:`explainable_copy` made it, used as it is instead
    of a fresh copy per call (the service keeps one per model); grad-cam hooks its layers during the
    call, so the caller must not let two calls use the same one at once.

    >>> ex = explain("runs/classify/shapes", ["a.png"], method="gradcam", target="circle")
    >>> ex[0].map.shape, ex[0].label, ex[0].top
    """
    import torch

    meth = get_method(method)
    if layer is not None and not meth.uses_layer:
        raise ConfigError(f"{method} attributes the input pixels: --layer does not apply (it is for CAM methods)")
    predictor, explainer = _load(run, device)
    card = predictor.card
    resolved = explainer.resolve(target, card)
    model = explainable if explainable is not None else explainable_copy(predictor.model)
    lay = resolve_layer(model, layer) if meth.uses_layer else None
    srcs = list(images) if isinstance(images, (list, tuple)) else [images]
    inputs = [explainer.read(src, card) for src in srcs]  # every image decoded before any model work
    dev = next(model.parameters()).device
    results = []
    with torch.enable_grad():  # callers may be under no_grad/inference_mode; gradients are the point here
        for src, (x, img) in zip(srcs, inputs):
            heat, layer_name, choice = _saliency(model, x.to(dev), meth, lay, explainer, resolved, card)
            image = as_rgb(np.asarray(img))
            results.append(Explanation(
                image=image, map=heat, overlay=overlay(image, heat), method=meth.name, layer=layer_name,
                target=choice.index, label=choice.label, prob=choice.prob, top=choice.top,
                source=str(src) if isinstance(src, (str, Path)) else None))
    if out is not None:
        from .io import write_explanations

        write_explanations(results, out)
    return results


def _load(run: Any, device: str) -> tuple[Any, TaskExplainer]:
    """``(predictor, its task's explainer)`` of a run folder, a model.json or a loaded predictor."""
    if hasattr(run, "card") and hasattr(run, "model"):
        return run, get_explainer(run.card.get("task"), "this predictor")
    from ..artifact import read_card
    from ..tasks import get_task

    card = read_card(run)
    explainer = get_explainer(card.get("task"), run)  # refuse other tasks before loading weights
    return get_task(card["task"]).load(run, device=device, card=card), explainer


def explainable_copy(model: "nn.Module") -> "nn.Module":
    """A copy of ``model`` in eval mode with in-place activations turned off: grad-cam hooks a layer's
    output, and an in-place ReLU after it would overwrite the saved activations (and its gradient hook
    would see a modified tensor). The caller's model is left as it was."""
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ConfigError("explain needs the PyTorch model: load the run with backend='torch' (not onnx)")
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return model


def _forward(model: "nn.Module", x: "torch.Tensor", layer: Layer | None) -> tuple["torch.Tensor", Any]:
    """The model's output for ``x`` and, when a layer is given, that layer's output (for the shape check)."""
    import torch

    seen: list[Any] = []
    handle = layer.module.register_forward_hook(lambda m, i, o: seen.append(o)) if layer else None
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        if handle is not None:
            handle.remove()
    return out, (seen[0] if seen else None)


def _saliency(model: "nn.Module", x: "torch.Tensor", meth: Method, layer: Layer | None,
              explainer: TaskExplainer, resolved: Any, card: dict[str, Any]) -> tuple[np.ndarray, str, Choice]:
    """``(map (S, S) in [0, 1], the layer's name, the explained Choice)`` of one input ``x`` (1, C, S, S)."""
    import torch

    output, layer_out = _forward(model, x, layer)
    if layer is not None:
        spatial_check(layer, layer_out, family_of(model).candidates(model))
    choice = explainer.choose(resolved, output, card)
    baseline = normalise(torch.zeros(x.shape, dtype=torch.uint8), card).to(x.device)  # the black image
    job = Job(model, x, choice.score, layer.module if layer else None, layer.reshape if layer else None, baseline)
    heat = unit_range(resize_map(unit_range(meth.run(job)), tuple(x.shape[-2:])))
    return heat, (layer.name if layer else INPUT), choice
