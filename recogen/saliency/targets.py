"""What to explain, per task: a registry from task name to a :class:`TaskExplainer`, which reads an image
for the run's model, turns the user's ``target`` into something the model's output can be scored by,
and summarises the output (top classes).

Registered: classification (a class, scored by its logit), segmentation (a class over the region
predicted as it: grad-cam's ``SemanticSegmentationTarget``) and detection (one target per box, scored
by the matched box's IoU + score: grad-cam's ``FasterRCNNBoxScoreTarget``). Another task adds one
subclass and one :func:`register_explainer` call.
"""
from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError, RunError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image
    from torch import nn

TOP = 3  # classes (boxes) reported per image
MAX_BOXES = 3  # detection: boxes explained per image by default (each above the run's conf threshold)
MATCH_IOU = 0.5  # detection: IoU a box of a (perturbed) output needs with the explained box to count


@dataclass(frozen=True)
class Choice:
    """The explained target of one image: class ``index`` and ``label``, the model's ``prob`` of it,
    ``score`` (grad-cam's target: one image's output -> scalar) and the ``top`` classes. Detection adds
    the explained ``box`` (xyxy in the image's own pixels) and its ``rank`` among the image's explained
    boxes; segmentation the class's pixel ``share`` of the prediction."""

    index: int
    label: str
    prob: float
    score: Callable[[Any], "torch.Tensor"]
    top: list[dict[str, Any]]
    box: list[float] | None = None
    rank: int | None = None
    share: float | None = None


class TaskExplainer:
    """How ``explain`` works with one task's runs; subclass it for a task and register an instance."""

    task: str = ""
    kind: str = ""  # the task in words, for messages: "classification"

    def read(self, src: Any, card: dict[str, Any]) -> tuple["torch.Tensor", "Image.Image"]:
        """``(float input (1, C, S, S), the decoded image at its own size)``: what the predictor feeds
        the model (the card's channels and size, then :meth:`prepare`)."""
        from ..data.images import read_for_card

        batch, img = read_for_card(src, card)
        return self.prepare(batch, card), img

    def prepare(self, batch: "torch.Tensor", card: dict[str, Any]) -> "torch.Tensor":
        """A uint8 batch at the model's size as the model's float input (also makes the black baseline)."""
        return normalise(batch, card)

    def wrap(self, model: "nn.Module", card: dict[str, Any]) -> "nn.Module":
        """The module the methods call with ``(B, C, S, S)`` inputs (``model``, an explainable copy,
        may be changed in place); its outputs are what :attr:`Choice.score` reads."""
        return model

    def resolve(self, target: Any, card: dict[str, Any]) -> Any:
        """The user's ``target`` checked against the card, once per call (None: the model's choice)."""
        return resolve_class(target, card["classes"])

    def choose(self, resolved: Any, output: Any, card: dict[str, Any]) -> Choice:
        """The :class:`Choice` for one image from its model ``output`` (batch of one)."""
        raise NotImplementedError

    def choices(self, resolved: Any, output: Any, card: dict[str, Any], size: tuple[int, int]) -> list[Choice]:
        """Every :class:`Choice` to explain in one image (one map each); ``size`` is the image's own
        (H, W). One by default; detection gives one per box."""
        return [self.choose(resolved, output, card)]


def normalise(batch: "torch.Tensor", card: dict[str, Any]) -> "torch.Tensor":
    """A uint8 batch as the model's float input: /255, then the card's mean and std (as in predict)."""
    import torch

    mean = torch.tensor(card["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(card["normalize"]["std"]).view(1, -1, 1, 1)
    return (batch.float() / 255 - mean) / std


def resolve_class(target: Any, classes: list[str]) -> int | None:
    """A class given by name or index (a string of digits counts as an index unless it is a name) as
    its index; None stays None; anything else is a ConfigError naming the classes."""
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


class ClassifyExplainer(TaskExplainer):
    """Classification: the target is a class (index or name; default the top predicted class), scored
    by its logit (grad-cam's ``ClassifierOutputTarget``), as Grad-CAM's paper does (pre-softmax)."""

    task = "classify"
    kind = "classification"

    def choose(self, resolved: int | None, output: "torch.Tensor", card: dict[str, Any]) -> Choice:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        classes = card["classes"]
        probs = output.detach().float().softmax(-1)[0]
        p, ix = probs.topk(min(TOP, len(classes)))
        top = [{"label": classes[i], "index": i, "prob": q} for q, i in zip(p.tolist(), ix.tolist())]
        index = int(ix[0]) if resolved is None else resolved
        return Choice(index, classes[index], float(probs[index]), ClassifierOutputTarget(index), top)


class SegmentExplainer(TaskExplainer):
    """Segmentation: the target is a class (index or name; default the most frequent class of the
    image's prediction other than background), scored as the sum of its logits over the pixels predicted
    as it (grad-cam's ``SemanticSegmentationTarget``); a class predicted nowhere is scored over the whole
    image. Reports the class's pixel share and the top classes by share (``prob``: the mean probability
    of the class over its region)."""

    task = "segment"
    kind = "segmentation"

    def choose(self, resolved: int | None, output: "torch.Tensor", card: dict[str, Any]) -> Choice:
        import numpy as np
        import torch
        from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

        classes = card["classes"]
        logits = output.detach().float()[0]  # (K, S, S)
        probs = logits.softmax(0)
        pred = logits.argmax(0)
        counts = np.bincount(pred.flatten().numpy(), minlength=len(classes)).astype(np.float64)
        shares = counts / counts.sum()

        def mean_prob(k: int, region: "torch.Tensor") -> float:
            return float(probs[k][region].mean()) if bool(region.any()) else float(probs[k].mean())

        order = [int(k) for k in np.argsort(-shares, kind="stable") if shares[k] > 0]
        top = [{"label": classes[k], "index": k, "prob": mean_prob(k, pred == k), "share": float(shares[k])}
               for k in order[:TOP]]
        if resolved is None:
            bg = 0 if classes and classes[0] == "background" else None
            resolved = next((k for k in order if k != bg), order[0])
        region = pred == resolved
        mask = (region if bool(region.any()) else torch.ones_like(region)).numpy().astype(np.float32)
        return Choice(resolved, classes[resolved], mean_prob(resolved, region), SemanticSegmentationTarget(resolved, mask),
                      top, share=float(shares[resolved]))


class BoxScoreTarget:
    """One box's score in a detector's output (a dict of boxes, scores, labels in the model's input
    pixels, labels 0..K-1), as grad-cam's ``FasterRCNNBoxScoreTarget`` scores a box: the output box
    that overlaps it most, if by IoU > :data:`MATCH_IOU`, gives its IoU + score; none gives 0. Unlike
    that class, only boxes of the same class are matched: a detector may put several classes on one
    box, and the best-overlapping box of another class must not hide this one's."""

    def __init__(self, box: list[float], label: int):
        self.box, self.label = box, label

    def __call__(self, output: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        import torch
        from torchvision.ops import box_iou

        boxes, scores = output["boxes"], output["scores"]
        same = output["labels"] == self.label
        zero = scores.sum() * 0  # 0, on the graph when there is one
        if not bool(same.any()):
            return zero
        ious = box_iou(torch.tensor([self.box], dtype=boxes.dtype, device=boxes.device), boxes[same])[0]
        j = int(ious.argmax())
        return ious[j] + scores[same][j] if float(ious[j].detach()) > MATCH_IOU else zero


class DetectExplainer(TaskExplainer):
    """Detection: one map per box. By default the image's best boxes (up to :data:`MAX_BOXES` above the
    run's score threshold ``conf``, after its NMS; the single best box when none passes), a class
    (``--class``) keeps only that class's boxes. Each is scored by :class:`BoxScoreTarget`; the model's
    own post-processing keeps boxes down to score 0.001 while explaining, so a perturbed input's box
    fades rather than vanishes at the threshold."""

    task = "detect"
    kind = "detection"

    def prepare(self, batch: "torch.Tensor", card: dict[str, Any]) -> "torch.Tensor":
        # torchvision detectors take floats in [0, 1] and normalise inside (card["normalize"]["applied_by"]).
        return batch.float() / 255

    def wrap(self, model: "nn.Module", card: dict[str, Any]) -> "nn.Module":
        from ..tasks.detect.outputs import EVAL_SCORE_THRESH, PREDICT_DEFAULTS, _postprocess_owner

        owner = _postprocess_owner(model)  # ``model`` is explain's own copy: set for good
        owner.score_thresh, owner.detections_per_img = EVAL_SCORE_THRESH, 1000
        owner.nms_thresh = {**PREDICT_DEFAULTS, **card.get("predict", {})}["iou"]
        return DetectionOutputs(model)

    def choices(self, resolved: int | None, output: list[dict[str, "torch.Tensor"]], card: dict[str, Any],
                size: tuple[int, int]) -> list[Choice]:
        import torch

        from ..tasks.detect.outputs import PREDICT_DEFAULTS, keep_detections

        classes = card["classes"]
        d = {**PREDICT_DEFAULTS, **card.get("predict", {})}
        raw = {k: v.detach().cpu() for k, v in output[0].items()}
        every = keep_detections(raw, 0.0, d["iou"], 1000, classes)  # best first
        if resolved is not None:
            every = [b for b in every if b["index"] == resolved]
        boxes = [b for b in every if b["score"] >= d["conf"]][:MAX_BOXES] or every[:1]
        if not boxes:
            what = f"no {classes[resolved]} box" if resolved is not None else "no box"
            raise RunError(f"the detector finds {what} at any score in one of the images; nothing to explain there")
        s = card["image_size"]
        h, w = size
        scale = torch.tensor([w / s, h / s, w / s, h / s])

        def to_image(b: dict[str, Any]) -> list[float]:
            v = (torch.tensor(b["box"]) * scale).clamp_min(0)
            v[0::2], v[1::2] = v[0::2].clamp_max(w), v[1::2].clamp_max(h)
            return [round(float(x), 2) for x in v]

        top = [{"label": b["label"], "index": b["index"], "prob": b["score"], "box": to_image(b)}
               for b in [b for b in keep_detections(raw, 0.0, d["iou"], 1000, classes) if b["score"] >= d["conf"]][:TOP]]
        return [Choice(b["index"], b["label"], b["score"], BoxScoreTarget(b["box"], b["index"]), top, box=to_image(b),
                       rank=i) for i, b in enumerate(boxes)]


@functools.cache
def _detection_outputs_class() -> type:
    from torch import nn

    class DetectionOutputs(nn.Module):
        """A torchvision detector called with a (B, 3, S, S) batch, its outputs with recogen's labels
        (0..K-1, the background column dropped: ``tasks.detect.outputs``)."""

        def __init__(self, detector: nn.Module):
            super().__init__()
            self.detector = detector

        def forward(self, x):
            from ..tasks.detect.outputs import _from_model_outputs

            return _from_model_outputs(self.detector(list(x)))

    return DetectionOutputs


def DetectionOutputs(detector: "nn.Module") -> "nn.Module":  # noqa: N802 - the class is made on first use
    """The detector wrapped as :class:`DetectionOutputs` (defined when first needed: torch loads late)."""
    return _detection_outputs_class()(detector)


EXPLAINERS: dict[str, TaskExplainer] = {}


def register_explainer(explainer: TaskExplainer) -> TaskExplainer:
    """Make ``explain`` accept runs of ``explainer.task`` (duplicate tasks are an error)."""
    if explainer.task in EXPLAINERS:
        raise ValueError(f"duplicate explainer for task {explainer.task!r}")
    EXPLAINERS[explainer.task] = explainer
    return explainer


register_explainer(ClassifyExplainer())
register_explainer(SegmentExplainer())
register_explainer(DetectExplainer())


def get_explainer(task: str | None, where: Any) -> TaskExplainer:
    """The explainer of runs of ``task``; another task is a RunError naming what is supported."""
    if task not in EXPLAINERS:
        kinds = [e.kind for e in EXPLAINERS.values()]
        kinds = ", ".join(kinds[:-1]) + " and " + kinds[-1] if len(kinds) > 1 else kinds[0]
        raise RunError(f"{where} holds a {task} model; explain supports {kinds} runs")
    return EXPLAINERS[task]
