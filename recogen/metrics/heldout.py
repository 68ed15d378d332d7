"""Which split a figure was measured on, said loudly when it is not a held-out test.

A recogniser's validation split picks its best checkpoint (and, with a budget, when to stop), so a
figure measured on it is optimistic; the training split more so. Every ``metrics.json`` therefore
records ``split`` and ``held_out`` (true only when the images took no part in training or in choosing
the checkpoint), and any other figure comes with a ``warning`` that is also logged as one line (on
stderr in the CLI, through the ``recogen`` logger, so Python callers can silence or capture it).

>>> split_fields("val", "digits")
{'split': 'val', 'held_out': False, 'warning': 'digits has no test split; these are VALIDATION figures ...'}
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("recogen")


def split_fields(split: str, data: str, *, has_test: bool | None = None) -> dict[str, Any]:
    """``{"split", "held_out"}`` for a recogniser's metrics, plus ``"warning"`` (also logged) unless a test split.

    ``has_test`` says whether the data set has a test split: False or None (what ``train`` evaluates on
    val for) makes the warning say there is none; True means val or train was asked for explicitly.
    """
    out: dict[str, Any] = {"split": split, "held_out": split == "test"}
    if split == "val":
        why = (f"{data} has no test split; these" if not has_test else f"{data} val: these")
        out["warning"] = (f"{why} are VALIDATION figures (used to pick the best checkpoint), not a held-out test")
    elif split != "test":
        out["warning"] = (f"{data} {split}: these are TRAINING figures (the model was fit to these images), "
                          "not a held-out test")
    return add_warnings(out, [out.pop("warning")] if "warning" in out else [])


def add_warnings(metrics: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Join ``notes`` into ``metrics["warning"]`` (kept in metrics.json) and log each; returns ``metrics``."""
    if notes:
        metrics["warning"] = "; ".join(notes)
        for note in notes:
            log.warning("warning: %s", note)
    return metrics
