"""What to explain, per task: a registry from task name to a :class:`TaskExplainer`, which reads an image
for the run's model, turns the user's ``target`` into something the model's output can be scored by,
and summarises the output (top classes).

Only classification is registered so far. Segmentation (grad-cam's ``SemanticSegmentationTarget``: a
class over a region) and detection (``FasterRCNNBoxScoreTarget``: a box) fit the same slots; each adds
one subclass and one :func:`register_explainer` call.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError, RunError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

TOP = 3  # classes reported per image


@dataclass(frozen=True)
class Choice:
    """The explained target of one image: class ``index`` and ``label``, the model's ``prob`` of it,
    ``score`` (grad-cam's target: one image's output -> scalar) and the ``top`` classes."""

    index: int
    label: str
    prob: float
    score: Callable[["torch.Tensor"], "torch.Tensor"]
    top: list[dict[str, Any]]


class TaskExplainer:
    """How ``explain`` works with one task's runs; subclass it for a task and register an instance."""

    task: str = ""
    kind: str = ""  # the task in words, for messages: "classification"

    def read(self, src: Any, card: dict[str, Any]) -> tuple["torch.Tensor", "Image.Image"]:
        """``(normalised float input (1, C, S, S), the decoded image at its own size)``: what the
        predictor feeds the model (the card's channels, size and normalisation)."""
        from ..data.images import read_for_card

        batch, img = read_for_card(src, card)
        return normalise(batch, card), img

    def resolve(self, target: Any, card: dict[str, Any]) -> Any:
        """The user's ``target`` checked against the card, once per call (None: the model's choice)."""
        raise NotImplementedError

    def choose(self, resolved: Any, output: "torch.Tensor", card: dict[str, Any]) -> Choice:
        """The :class:`Choice` for one image from its model ``output`` (batch of one)."""
        raise NotImplementedError


def normalise(batch: "torch.Tensor", card: dict[str, Any]) -> "torch.Tensor":
    """A uint8 batch as the model's float input: /255, then the card's mean and std (as in predict)."""
    import torch

    mean = torch.tensor(card["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(card["normalize"]["std"]).view(1, -1, 1, 1)
    return (batch.float() / 255 - mean) / std


class ClassifyExplainer(TaskExplainer):
    """Classification: the target is a class (index or name; default the top predicted class), scored
    by its logit (grad-cam's ``ClassifierOutputTarget``), as Grad-CAM's paper does (pre-softmax)."""

    task = "classify"
    kind = "classification"

    def resolve(self, target: Any, card: dict[str, Any]) -> int | None:
        classes: list[str] = card["classes"]
        if target is None:
            return None
        given = target
        if isinstance(target, str) and target in classes:  # a name first: classes may be named "0".."9"
            return classes.index(target)
        if isinstance(target, str) and target.strip().lstrip("-").isdigit():
            target = int(target)
        if isinstance(target, numbers.Integral) and not isinstance(target, bool) and 0 <= target < len(classes):
            return int(target)
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise ConfigError(f"unknown class {given!r}: give a class name ({shown}) or an index from 0 to {len(classes) - 1}")

    def choose(self, resolved: int | None, output: "torch.Tensor", card: dict[str, Any]) -> Choice:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        classes = card["classes"]
        probs = output.detach().float().softmax(-1)[0]
        p, ix = probs.topk(min(TOP, len(classes)))
        top = [{"label": classes[i], "index": i, "prob": q} for q, i in zip(p.tolist(), ix.tolist())]
        index = int(ix[0]) if resolved is None else resolved
        return Choice(index, classes[index], float(probs[index]), ClassifierOutputTarget(index), top)


EXPLAINERS: dict[str, TaskExplainer] = {}


def register_explainer(explainer: TaskExplainer) -> TaskExplainer:
    """Make ``explain`` accept runs of ``explainer.task`` (duplicate tasks are an error)."""
    if explainer.task in EXPLAINERS:
        raise ValueError(f"duplicate explainer for task {explainer.task!r}")
    EXPLAINERS[explainer.task] = explainer
    return explainer


register_explainer(ClassifyExplainer())


def get_explainer(task: str | None, where: Any) -> TaskExplainer:
    """The explainer of runs of ``task``; another task is a RunError naming what is supported."""
    if task not in EXPLAINERS:
        kinds = " and ".join(e.kind for e in EXPLAINERS.values())
        raise RunError(f"{where} holds a {task} model; explain supports {kinds} runs so far")
    return EXPLAINERS[task]
