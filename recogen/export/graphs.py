"""What an exported file computes, per task: the network from a float batch to tensors.

Classifiers and segmenters export as they are: input the normalised batch (B, C, S, S) (the card's
``normalize``), output the logits. Detectors export everything before the data-dependent steps:
normalise + pad, backbone and (one-stage) head, and the predictor runs torchvision's own decode and
NMS on the outputs (:mod:`recogen.export.onnx`). That split keeps the graph free of NMS and
per-image loops, so it takes any batch size, exports with every detector and matches eager to
float rounding; the post-processing stays the tested torchvision code, with the predictor's
``conf``/``iou``/``max_det`` applied as they are in eager.

- one-stage detectors (FCOS, RetinaNet, SSD): outputs are the head's (B, anchors, ·) tensors;
- two-stage (Faster R-CNN): outputs are the FPN feature maps; RPN + RoI heads run in torch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelError

INPUT_NAME = "images"
CHECK_BATCHES = (1, 3)  # exports are traced at batch 2 and checked at 1 and 3: the batch axis really is dynamic


@dataclasses.dataclass
class Graph:
    """An exportable network: ``module(x)`` maps the input batch to ``output_names`` tensors (a tuple)."""

    module: nn.Module
    output_names: list[str]
    sample: Callable[[int, int], torch.Tensor]  # (batch, seed) -> an input batch
    meta: dict[str, Any]  # what the runtime needs to use the outputs (kind, feature-map sizes...)
    input_doc: str


class _Tupled(nn.Module):
    """Return a model's single tensor output as a 1-tuple (every graph returns a tuple)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return (self.model(x),)


def _normalised_sample(card: dict[str, Any]) -> Callable[[int, int], torch.Tensor]:
    mean = torch.tensor(card["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(card["normalize"]["std"]).view(1, -1, 1, 1)
    c, s = card["in_chans"], card["image_size"]

    def sample(batch: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        img = torch.randint(0, 256, (batch, c, s, s), generator=g, dtype=torch.uint8)
        return (img.float() / 255 - mean) / std

    return sample


def _dense_graph(model: nn.Module, card: dict[str, Any]) -> Graph:
    """Classifiers and segmenters: the network itself on the normalised batch."""
    m = card["normalize"]
    return Graph(_Tupled(model.eval()), ["logits"], _normalised_sample(card), {"kind": "logits"},
                 f"float32 (batch, {card['in_chans']}, {card['image_size']}, {card['image_size']}): pixels / 255, "
                 f"then (x - mean) / std with mean {m['mean']} and std {m['std']}")


# -------------------------------------------------------------------------------------- detectors
class DetectorNetwork(nn.Module):
    """A torchvision detector up to its data-dependent steps, on a (B, 3, S, S) batch in [0, 1].

    Reproduces ``GeneralizedRCNNTransform`` for inputs already at the model's size (its resize is
    then the identity): normalise, then zero-pad to ``size_divisible`` as its ``batch_images`` does.
    """

    def __init__(self, det: nn.Module, image_size: int, kind: str):
        super().__init__()
        t = det.transform
        self.det, self.kind = det.eval(), kind
        self.register_buffer("mean", torch.tensor(t.image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(t.image_std).view(1, -1, 1, 1), persistent=False)
        if t.fixed_size is not None and tuple(t.fixed_size) != (image_size, image_size):
            raise ModelError(f"the detector's fixed input size {t.fixed_size} is not the card's {image_size}")
        d = t.size_divisible
        self.padded = -(-image_size // d) * d
        self.pad = self.padded - image_size

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The backbone's feature maps by name."""
        x = (x - self.mean) / self.std
        if self.pad:
            x = nn.functional.pad(x, (0, self.pad, 0, self.pad))
        feats = self.det.backbone(x)
        return feats if isinstance(feats, dict) else {"0": feats}

    def forward(self, x: torch.Tensor):
        feats = list(self.features(x).values())
        if self.kind == "features":
            return tuple(feats)
        return tuple(self.det.head(feats).values())


def _detector_kind(det: nn.Module) -> str:
    """How the torchvision detector's eval forward continues after the network (see the runtime)."""
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    for cls, kind in ((FCOS, "levels"), (RetinaNet, "levels"), (SSD, "flat"), (GeneralizedRCNN, "two-stage")):
        if isinstance(det, cls):
            return kind
    raise ModelError(f"cannot export a {type(det).__name__} detector: recogen exports FCOS, RetinaNet, SSD "
                     "and Faster R-CNN models")


def _detector_graph(det: nn.Module, card: dict[str, Any]) -> Graph:
    post = _detector_kind(det)
    s = card["image_size"]
    net = DetectorNetwork(det, s, "features" if post == "two-stage" else "head")

    def sample(batch: int, seed: int) -> torch.Tensor:
        return torch.rand((batch, 3, s, s), generator=torch.Generator().manual_seed(seed))

    # Output names and feature-map sizes from one eager pass (they depend on the architecture only).
    with torch.inference_mode():
        feats = net.features(sample(1, 0))
        names = list(feats) if post == "two-stage" else list(det.head(list(feats.values())))
        levels = [list(f.shape[-2:]) for f in feats.values()]
    meta = {"kind": post, "levels": levels, "padded_size": net.padded, "keys": [str(n) for n in names]}
    # FPN maps are keyed "0", "1", ..., "pool": not valid ONNX names, so prefixed (the runtime uses "keys").
    out_names = [f"features_{n}" for n in names] if post == "two-stage" else [str(n) for n in names]
    return Graph(net, out_names, sample, meta,
                 f"float32 (batch, 3, {s}, {s}): RGB pixels / 255 (normalised inside the graph)")


GRAPHS: dict[str, Callable[[nn.Module, dict[str, Any]], Graph]] = {
    "classify": _dense_graph,
    "segment": _dense_graph,
    "detect": _detector_graph,
}


def build_graph(model: nn.Module, card: dict[str, Any]) -> Graph:
    """The exportable graph of a loaded portable model (see the module docstring)."""
    task = card.get("task")
    if task not in GRAPHS:
        raise ModelError(f"cannot export a {task!r} model; exportable tasks: {', '.join(GRAPHS)}")
    graph = GRAPHS[task](model.eval(), card)
    # The wrapper must be in eval mode too: exporters restore the top module's mode onto every child.
    graph.module.eval()
    return graph


def check_against_eager(graph: Graph, run: Callable[[torch.Tensor], tuple]) -> float:
    """Max |run(x) - graph.module(x)| over seeded sample batches of each size in CHECK_BATCHES.

    ``run`` is the exported model (onnxruntime session, traced module) on the same input batch.
    """
    worst = 0.0
    with torch.no_grad():
        for i, b in enumerate(CHECK_BATCHES):
            x = graph.sample(b, 1 + i)
            worst = max(worst, max_abs_diff(tuple(t.numpy() for t in graph.module(x)), run(x)))
    return worst


def max_abs_diff(a: tuple, b: tuple) -> float:
    """Largest absolute difference between two tuples of same-shaped arrays/tensors."""
    import numpy as np

    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            return float("inf")
        if x.size:
            worst = max(worst, float(np.abs(x - y).max()))
    return worst
