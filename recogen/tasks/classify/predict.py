"""Classification results: probabilities, the evaluator (metrics + confusion matrix) and the Classifier."""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from ...data import ImageSet
from ...data.images import fit_to_card, read_for_card
from ...errors import ConfigError
from ..params import Params
from ..predictor import Predictor
from ..skeleton import write_metrics


@torch.inference_mode()
def predict_probs(model: nn.Module, card: dict[str, Any], images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities for a uint8 batch already at the model's size and channels; with the card's
    ``tta: hflip`` (``--recipe speed``), of the mean logits of each image and its mirror image."""
    from .speed import tta_logits

    mean = torch.tensor(card["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(card["normalize"]["std"]).view(1, -1, 1, 1)
    dev = next(model.parameters()).device
    tta = card.get("tta", "none")
    out = []
    for i in range(0, len(images), batch_size):
        x = (images[i : i + batch_size].float().div_(255) - mean) / std
        out.append(tta_logits(model, x.to(dev), tta).float().softmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(card["classes"]))


def evaluate_model(model, card: dict[str, Any], ds: ImageSet, run: Path | None, split: str, data: str,
                   has_test: bool | None = None) -> dict[str, Any]:
    """Accuracy, top-5, macro F1, per-class report and confusion matrix of ``model`` on ``ds``; written
    (``metrics*.json``, ``confusion_matrix.png``) into ``run`` unless it is None."""
    from ...metrics.classification import classification_metrics
    from ...metrics.heldout import split_fields

    probs = predict_probs(model, card, fit_to_card(ds.images, card))
    metrics = {"task": "classify", "data": data, **split_fields(split, data, has_test=has_test),
               **classification_metrics(probs, ds.labels, card["classes"])}
    if run is not None:
        # report_text is sklearn's text table of the same numbers: printed by the CLI, not stored.
        write_metrics(run, split, {k: v for k, v in metrics.items() if k != "report_text"})
        from ...plots import plot_confusion_matrix

        plot_confusion_matrix(metrics["confusion_matrix"], card["classes"], run / "confusion_matrix.png")
    return metrics


class ClassifyParams(Params):
    """``POST /v1/classify`` parameters."""

    topk: int = Field(5, ge=1, le=1000, title="Top-k",
        description="how many labels to return (capped at the number of classes)")


class Classifier(Predictor):
    """A trained classifier, ready to predict. Get one with ``recogen.load(RUN)``.

    >>> clf = recogen.load("runs/classify/digits")
    >>> clf.predict("three.png", topk=3)
    {'label': '3', 'index': 3, 'prob': 0.99, 'topk': [...]}
    """

    task = "classify"

    def preprocess(self, images: list) -> torch.Tensor:
        """Decode, convert to the model's channels and resize to its input size: a uint8 batch."""
        return torch.cat([read_for_card(src, self.card)[0] for src in images])

    def predict(self, images, topk: int = 5):
        """Top-k labels with probabilities for one image (returns a dict) or a list (a list of dicts).

        Each image may be a path, bytes, a PIL image or a uint8 numpy array.
        """
        k = self._k(topk)
        return self.each(images, lambda srcs: self._results(self.preprocess(srcs), k))

    def stream_batch(self, batch: dict[str, Any], out_dir=None, topk: int = 5) -> list[dict[str, Any]]:
        """``predict``'s results (without "path") of a batch the streaming path (``tasks/stream.py``) decoded
        in its DataLoader workers: ``batch["x"]`` is uint8 (B, C, S, S) at the model's input. Nothing is saved."""
        return self._results(batch["x"], self._k(topk))

    def _k(self, topk) -> int:
        if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 1:
            raise ConfigError(f"bad topk {topk!r}: it must be a whole number >= 1 (how many labels to show)")
        return max(1, min(topk, len(self.classes)))

    def _results(self, x: torch.Tensor, k: int) -> list[dict[str, Any]]:
        top_p, top_i = predict_probs(self.model, self.card, x).topk(k, dim=1)
        return [{"label": self.classes[ix[0]], "index": ix[0], "prob": ps[0],
                 "topk": [{"label": self.classes[i], "index": i, "prob": p} for p, i in zip(ps, ix)]}
                for ps, ix in zip(top_p.tolist(), top_i.tolist())]
