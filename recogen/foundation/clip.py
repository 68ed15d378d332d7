"""Zero-shot classification with CLIP-family models (CLIP, SigLIP, ALIGN...): each label becomes a
sentence ("a photo of a cat."), and an image's class is the sentence its embedding is closest to.

Loaded through transformers' ``AutoModelForZeroShotImageClassification`` and ``AutoProcessor``. The
probabilities are the softmax, over the labels given, of the model's image-text logits: a ranking among
those labels, not a calibrated chance that the image shows any one of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.images import open_image
from ..errors import ConfigError, DataError
from .base import FoundationPredictor
from .options import PROMPT_TEMPLATE, parse_labels, prompts

# Families whose text tower was trained on fixed-length text: the processor must pad to that length
# (as transformers' own zero-shot pipeline does for SigLIP).
PAD_TO_MAX = {"siglip": 64, "siglip2": 64}


class ZeroShotClassifier(FoundationPredictor):
    """A CLIP-family model that classifies images among labels given at call time.

    >>> clf = ZeroShotClassifier.load("openai/clip-vit-base-patch32")
    >>> clf.predict("cat.jpg", labels="cat,dog,car", topk=2)
    {'path': 'cat.jpg', 'label': 'cat', 'index': 0, 'prob': 0.97, 'topk': [...]}
    """

    task = "classify"
    prefix = "clip"
    what = "zero-shot image classification"
    model_class = "AutoModelForZeroShotImageClassification"

    @torch.inference_mode()
    def probs(self, images: list, labels: list[str], prompt_template: str | None = None,
              batch_size: int = 32) -> torch.Tensor:
        """(N, L) probabilities of ``images`` (anything :func:`open_image` reads) over ``labels``."""
        texts = prompts(labels, prompt_template)
        pad = PAD_TO_MAX.get(self.card["model_type"])
        text_kw = {"padding": "max_length", "max_length": pad} if pad else {"padding": True}
        out = []
        for i in range(0, len(images), batch_size):
            pils = [open_image(src).convert("RGB") for src in images[i : i + batch_size]]
            enc = self.processor(text=texts, images=pils, return_tensors="pt", truncation=True, **text_kw)
            logits = self.model(**self.inputs(**enc)).logits_per_image
            out.append(logits.float().softmax(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(labels))

    def predict(self, images, labels: Any = None, prompt_template: str | None = None, topk: int = 5):
        """Top-k of ``labels`` (``"cat,dog"`` or a list) with probabilities for one image (returns a dict)
        or a list (a list of dicts): the fields of a trained classifier's ``predict``."""
        labels = parse_labels(labels, least=2)
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"bad topk {topk!r}: it must be a whole number >= 1 (how many labels to show)")
        k = min(topk, len(labels))

        def batch(srcs: list) -> list[dict[str, Any]]:
            top_p, top_i = self.probs(srcs, labels, prompt_template).topk(k, dim=1)
            return [{"label": labels[ix[0]], "index": ix[0], "prob": ps[0],
                     "topk": [{"label": labels[i], "index": i, "prob": p} for p, i in zip(ps, ix)]}
                    for ps, ix in zip(top_p.tolist(), top_i.tolist())]

        return self.each(images, batch)

    def evaluate(self, data: str, labels: Any = None, prompt_template: str | None = None, split: str | None = None,
                 out: str | Path | None = None) -> dict[str, Any]:
        """Accuracy, top-5, macro F1, per-class report and confusion matrix on a labelled image folder
        (``PATH`` or ``folder:PATH``: class folders, or train/val/test of class folders), as ``recogen
        classify eval`` reports a trained run. ``labels``: the text of each class, in the order of the
        folder's class names (default: the names, ``_`` read as a space); ``split``: one split of a
        train/val/test folder (default: every image, as none was used to train). With ``out``, writes
        ``metrics.json`` and ``confusion_matrix.png`` there."""
        from ..data.base import DataOptions
        from ..data.folder import scan_folder
        from ..metrics.classification import classification_metrics
        from ..utils import check_writable_folder

        if out is not None:  # before any image is read
            check_writable_folder(Path(out), "--out", "choose a folder this process can write into")
        path = data.removeprefix("folder:")
        if not Path(path).expanduser().is_dir():
            raise DataError(f"--data {data}: zero-shot eval reads a labelled image folder (PATH or folder:PATH, "
                            "with one folder per class)")
        _, _, classes, trees = scan_folder(path, DataOptions())
        if split is not None and split not in trees:
            has = ("only class folders: leave out --split to evaluate all its images"
                   if not (Path(path).expanduser() / "train").is_dir() else f"{'/, '.join(trees)}/")
            raise DataError(f"--split {split}: {path} has no {split}/ folder (it has {has})")
        chosen = [split] if split else list(trees)
        files = [str(p) for s in chosen for p in trees[s].paths]
        targets = torch.tensor([y for s in chosen for y in trees[s].labels], dtype=torch.long)
        texts = [c.replace("_", " ") for c in classes] if labels is None else parse_labels(labels, least=2)
        if len(texts) != len(classes):
            raise ConfigError(f"--labels gives {len(texts)} label(s) but {path} has {len(classes)} classes "
                              f"({', '.join(classes)}); give one label per class, in that order")
        probs = self.probs(files, texts, prompt_template)
        metrics = {"task": "classify", "data": data, "split": split or "all", "held_out": True,
                   "model": self.card["model"], "labels": texts,
                   "prompt_template": prompt_template or PROMPT_TEMPLATE,
                   **classification_metrics(probs, targets, classes)}
        if out is not None:
            write_report(metrics, classes, Path(out))
        return metrics


def write_report(metrics: dict[str, Any], classes: list[str], out: Path) -> None:
    """``metrics.json`` (without the printed report text) and ``confusion_matrix.png`` into ``out``, as
    ``recogen classify eval`` writes them into a run folder."""
    from ..plots import plot_confusion_matrix
    from ..utils import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", {k: v for k, v in metrics.items() if k != "report_text"})
    plot_confusion_matrix(metrics["confusion_matrix"], classes, out / "confusion_matrix.png")
