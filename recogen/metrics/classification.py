"""Classification metrics: torchmetrics for accuracy/top-k/confusion, sklearn for the per-class report."""
from __future__ import annotations

from typing import Any

import torch


def classification_metrics(probs: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, top-5 (when there are more than 5 classes), macro/weighted F1, per-class
    precision/recall/F1/support exactly as sklearn's ``classification_report``, and the confusion
    matrix (rows = true class, columns = predicted)."""
    from sklearn.metrics import classification_report
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

    k = len(classes)
    probs, targets = probs.float().cpu(), targets.long().cpu()
    preds = probs.argmax(1)
    out: dict[str, Any] = {
        "num_images": int(len(targets)),
        "accuracy": float(multiclass_accuracy(probs, targets, num_classes=k, average="micro")),
        "top5_accuracy": (
            float(multiclass_accuracy(probs, targets, num_classes=k, average="micro", top_k=5)) if k > 5 else None
        ),
    }
    rep = classification_report(
        targets.numpy(), preds.numpy(), labels=list(range(k)), target_names=classes, output_dict=True, zero_division=0
    )
    out["macro_f1"] = float(rep["macro avg"]["f1-score"])
    out["weighted_f1"] = float(rep["weighted avg"]["f1-score"])
    out["per_class"] = {
        c: {"precision": rep[c]["precision"], "recall": rep[c]["recall"], "f1": rep[c]["f1-score"], "support": int(rep[c]["support"])}
        for c in classes
    }
    out["confusion_matrix"] = multiclass_confusion_matrix(preds, targets, num_classes=k).tolist()
    out["report_text"] = classification_report(
        targets.numpy(), preds.numpy(), labels=list(range(k)), target_names=classes, zero_division=0, digits=4
    )
    return out


def confusion_text(cm: list[list[int]], classes: list[str], max_classes: int = 30) -> str:
    """The confusion matrix as an aligned text table (rows true, columns predicted)."""
    if len(classes) > max_classes:
        return f"(confusion matrix of {len(classes)} classes: see confusion_matrix.png)"
    names = [c[:8] for c in classes]
    w = max(5, max(len(n) for n in names), max(len(str(v)) for row in cm for v in row)) + 1
    lines = ["true\\pred".ljust(w) + "".join(n.rjust(w) for n in names)]
    lines += [n.ljust(w) + "".join(str(v).rjust(w) for v in row) for n, row in zip(names, cm)]
    return "\n".join(lines)
