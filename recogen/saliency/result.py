"""The result of explaining one image (:class:`Explanation`), apart from the code that makes or writes it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Explanation:
    """One image explained.

    ``image``: the image as decoded, uint8 (H, W, 3) at its own size (gray repeated); ``map``: float32
    (S, S) in [0, 1] at the model's input size S; ``overlay``: uint8 (H, W, 3), the map resized to the
    image and drawn over it; ``method``; ``layer``: the module explained (``"input"`` for
    integrated-gradients); ``target``/``label``/``prob``: the explained class and its probability;
    ``top``: the top classes ``[{"label", "index", "prob"}, ...]``; ``source``: the path it was read
    from; ``files``: ``{"overlay": ..., "map": ...}`` once written.
    """

    image: np.ndarray
    map: np.ndarray
    overlay: np.ndarray
    method: str
    layer: str
    target: int
    label: str
    prob: float
    top: list[dict[str, Any]]
    source: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON-able summary ``recogen explain --json`` prints (no arrays)."""
        head = {"path": self.source} if self.source is not None else {}
        return {**head, "method": self.method, "layer": self.layer,
                "target": {"label": self.label, "index": self.target, "prob": self.prob},
                "top": self.top, **self.files}
