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

    Detection (one Explanation per box): ``box`` the explained box ``[x1, y1, x2, y2]`` in the image's
    own pixels (drawn on the overlay), ``box_rank`` its rank among the image's explained boxes (0: the
    best), ``prob`` its score, ``top`` the image's best detections (each with its ``box``).
    Segmentation: ``share`` the fraction of the image's pixels predicted as the explained class,
    ``prob`` its mean probability there, ``top`` the classes with the largest shares (each with its
    ``share``). Both are None for classification.
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
    box: list[float] | None = None
    box_rank: int | None = None
    share: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON-able summary ``recogen explain --json`` prints (no arrays)."""
        head = {"path": self.source} if self.source is not None else {}
        target = {"label": self.label, "index": self.target, "prob": self.prob}
        target.update({k: v for k, v in (("box", self.box), ("share", self.share)) if v is not None})
        rank = {"box_rank": self.box_rank} if self.box_rank is not None else {}
        return {**head, "method": self.method, "layer": self.layer, "target": target, **rank,
                "top": self.top, **self.files}
