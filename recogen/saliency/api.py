"""``explain``: saliency maps of a trained run's predictions (the CLI's ``recogen explain`` calls this).

One call loads the run once, reads every image first (a bad file stops it before any model work), then
for each image: one forward pass (top classes, the targets: one, or one per box for detection), the
method's map at the model's input size scaled to [0, 1] per target, and an overlay on the image at its
own size. The same inputs give the same maps.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from .draw import as_rgb, draw_box, overlay, resize_map, unit_range
from .layers import Layer, family_of, resolve_layer, spatial_check
from .methods import Job, Method, get_method
from .result import Explanation
from .targets import Choice, TaskExplainer, get_explainer

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

INPUT = "input"  # the "layer" of attribution methods, which attribute the input pixels


def explain(run: Any, images: Any, method: str = "gradcam", target: Any = None, layer: str | None = None,
            out: str | Path | None = None, device: str = "cpu", *,
            explainable: "nn.Module | None" = None) -> list[Explanation]:
    """Explain a run's predictions on ``images`` with ``method``; returns one :class:`Explanation` each.

    ``run``: a run folder, a ``model.json`` or a loaded predictor (``recogen.load(RUN)``) of a
    classification, detection or segmentation run. ``images``: one image or a list (paths, bytes, PIL
    images, uint8 arrays), read as ``predict`` reads them. ``method``: gradcam, gradcam++, eigencam,
    scorecam or integrated-gradients. ``target``: the class to explain (index or name; default each
    image's top class; segmentation: its most frequent predicted class other than background;
    detection: only boxes of that class are explained). ``layer``: a module name of
    ``model.named_modules()``, or several comma-separated (their maps averaged; default: the
    architecture family's, e.g. the last conv stage, a detector's pyramid levels). ``out``: a folder to
    write ``NAME.METHOD.png`` (overlay) and ``NAME.METHOD.npy`` (map) into.

    Detection gives one Explanation per box (the image's best boxes above the run's ``conf``, up to 3,
    else its single best; ``box``, ``box_rank``; files ``NAME.METHOD.boxK.*``), in image order; the
    other tasks one per image.

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
    # explainable=: the service's copy, made once per served model (recogen/serve/explain.py)
    model = explainable if explainable is not None else explainable_copy(predictor.model)
    lay = resolve_layer(model, layer) if meth.uses_layer else None  # names as in the run's own model
    net = explainer.wrap(model, card)
    srcs = list(images) if isinstance(images, (list, tuple)) else [images]
    inputs = [explainer.read(src, card) for src in srcs]  # every image decoded before any model work
    dev = next(model.parameters()).device
    results = []
    with torch.enable_grad():  # callers may be under no_grad/inference_mode; gradients are the point here
        for src, (x, img) in zip(srcs, inputs):
            image = as_rgb(np.asarray(img))
            for heat, layer_name, choice in _saliency(net, model, x.to(dev), meth, lay, explainer, resolved, card,
                                                      image.shape[:2]):
                drawn = overlay(image, heat)
                if choice.box is not None:
                    drawn = draw_box(drawn, choice.box, choice.index)
                results.append(Explanation(
                    image=image, map=heat, overlay=drawn, method=meth.name, layer=layer_name,
                    target=choice.index, label=choice.label, prob=choice.prob, top=choice.top,
                    source=str(src) if isinstance(src, (str, Path)) else None,
                    box=choice.box, box_rank=choice.rank, share=choice.share))
    if out is not None:
        from .io import write_explanations

        write_explanations(results, out)
    return results


def _load(run: Any, device: str) -> tuple[Any, TaskExplainer]:
    """``(predictor, its task's explainer)`` of a run folder, a model.json or a loaded predictor."""
    if hasattr(run, "card") and hasattr(run, "model"):
        explainer = get_explainer(run.card.get("task"), "this predictor")
        if getattr(run.model, "session", None) is None:
            return run, explainer
        # An ONNX-backed predictor (recogen.load(RUN, backend="onnx")): onnxruntime has no layers to
        # hook nor gradients, so its run's PyTorch weights are loaded instead, as the service does.
        if getattr(run, "path", None) is None:
            raise ConfigError("explain needs the PyTorch model and this ONNX predictor was not loaded from a run "
                              "folder: load the run with recogen.load(RUN) (backend='torch')")
        from ..tasks import get_task

        return get_task(run.card["task"]).load(run.path, device=device, backend="torch"), explainer
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


def _forward(model: "nn.Module", x: "torch.Tensor", layer: Layer | None) -> tuple[Any, list[Any]]:
    """The model's output for ``x`` and, when a layer is given, each of its modules' outputs (for the
    shape check)."""
    import torch

    seen: list[list[Any]] = [[] for _ in (layer.parts if layer else [])]
    handles = [m.register_forward_hook(lambda mod, i, o, k=k: seen[k].append(o))
               for k, (_, m) in enumerate(layer.parts if layer else [])]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, [s[0] if s else None for s in seen]


def _saliency(net: "nn.Module", model: "nn.Module", x: "torch.Tensor", meth: Method, layer: Layer | None,
              explainer: TaskExplainer, resolved: Any, card: dict[str, Any],
              size: tuple[int, int]) -> list[tuple[np.ndarray, str, Choice]]:
    """``[(map (S, S) in [0, 1], the layer's name, the explained Choice), ...]`` of one input ``x``
    (1, C, S, S): one per target the explainer picks in it (``size``: the image's own (H, W)). ``net``
    is what the methods call, ``model`` the network whose layers are named."""
    import torch

    output, layer_outs = _forward(net, x, layer)
    if layer is not None:
        candidates = family_of(model).candidates(model)
        for (name, _), out in zip(layer.parts, layer_outs):
            spatial_check(layer, out, candidates, name)
    baseline = explainer.prepare(torch.zeros(x.shape, dtype=torch.uint8), card).to(x.device)  # the black image
    results = []
    for choice in explainer.choices(resolved, output, card, size):
        maps = []
        for _, module in (layer.parts if layer else [(INPUT, None)]):
            job = Job(net, x, choice.score, module, layer.reshape if layer else None, baseline)
            maps.append(unit_range(resize_map(unit_range(meth.run(job)), tuple(x.shape[-2:]))))
        # Several modules: their maps averaged, each scaled first (grad-cam's multi-layer rule).
        heat = maps[0] if len(maps) == 1 else unit_range(np.mean(maps, axis=0))
        results.append((heat, (layer.name if layer else INPUT), choice))
    return results
