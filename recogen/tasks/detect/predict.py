"""Detection results: the :class:`Detector`, the service's parameters, and ``predict`` with boxes drawn."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from pydantic import Field

from ...data.images import expand_inputs, open_image, read_for_card, write_png
from ...errors import ConfigError
from ..params import Params
from ..predictor import Predictor
from .outputs import PREDICT_DEFAULTS, detect_batch, keep_detections, postprocess


class DetectParams(Params):
    """``POST /v1/detect`` parameters."""

    conf: Optional[float] = Field(None, ge=0, le=1, title="Min score",
        description="minimum score (default: the model's, 0.25)")
    iou: Optional[float] = Field(None, gt=0, le=1, title="IoU",
        description="IoU threshold of class-wise NMS (default 0.45)")
    max_det: Optional[int] = Field(None, ge=1, le=1000, title="Max boxes",
        description="most boxes per image (default 100)")


class Detector(Predictor):
    """A trained detector, ready to predict. Get one with ``recogen.load(RUN)``.

    >>> det = recogen.load("runs/detect/shapes")
    >>> det.predict("scene.png", conf=0.3)
    {'path': 'scene.png', 'size': [480, 640], 'detections': [{'label': 'star', 'index': 3, 'score': 0.93,
      'box': [12.0, 40.5, 98.2, 130.0]}, ...]}
    """

    task = "detect"

    def preprocess(self, src) -> tuple[torch.Tensor, tuple[int, int]]:
        """Decode one image to RGB and resize it to the model's input: ``(uint8 (3, S, S), (H, W) original)``."""
        x, img = read_for_card(src, self.card)  # the card's in_chans is 3: detectors take RGB
        return x[0], (img.height, img.width)

    def predict(self, images, conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                batch_size: int = 16):
        """Detections for one image (returns a dict) or a list of images (a list of dicts).

        Each image may be a path, bytes, a PIL image or a uint8 numpy array. It is resized to the
        training size; boxes come back in the ORIGINAL image's pixels (xyxy). ``conf`` is the score
        threshold, ``iou`` the class-wise NMS threshold, ``max_det`` the most boxes per image
        (defaults: the model card's, 0.25 / 0.45 / 100).
        """
        conf, iou, max_det = self._settings(conf, iou, max_det)

        def chunk(srcs: list) -> list[dict[str, Any]]:
            pre = [self.preprocess(src) for src in srcs]
            return self._results(torch.stack([x for x, _ in pre]), [hw for _, hw in pre], conf, iou, max_det)

        return self.each(images, lambda srcs: [r for i in range(0, len(srcs), batch_size)
                                               for r in chunk(srcs[i : i + batch_size])])

    def stream_batch(self, batch: dict[str, Any], out_dir: str | Path | None = None, conf: float | None = None,
                     iou: float | None = None, max_det: int | None = None) -> list[dict[str, Any]]:
        """``predict``'s results (without "path") of a batch the streaming path (``tasks/stream.py``) decoded in
        its DataLoader workers: ``batch["x"]`` uint8 (B, 3, S, S), ``batch["size"]`` (B, 2) original (H, W).
        With ``out_dir`` each image is saved there with its boxes drawn, as ``batch["name"]`` + ".png"."""
        results = self._results(batch["x"], [tuple(hw) for hw in batch["size"].tolist()],
                                *self._settings(conf, iou, max_det))
        if out_dir is not None:
            for r, path, name in zip(results, batch["path"], batch["name"]):
                r["saved"] = save_drawn(path, r["detections"], Path(out_dir) / f"{name}.png")
        return results

    def _settings(self, conf, iou, max_det) -> tuple[float, float, int]:
        d = {**PREDICT_DEFAULTS, **self.card.get("predict", {})}
        conf = d["conf"] if conf is None else conf
        iou = d["iou"] if iou is None else iou
        max_det = d["max_det"] if max_det is None else max_det
        if not (0 <= conf <= 1 and 0 < iou <= 1 and max_det >= 1):
            raise ConfigError(f"need 0 <= conf <= 1, 0 < iou <= 1 and max_det >= 1; got {conf}, {iou}, {max_det}")
        return conf, iou, max_det

    def _results(self, x: torch.Tensor, sizes: list[tuple[int, int]], conf: float, iou: float,
                 max_det: int) -> list[dict[str, Any]]:
        """Results of a uint8 batch at the model's input whose images were ``sizes`` (H, W) originally."""
        size = self.card["image_size"]
        # The model's own threshold and NMS run with the same values; keep_detections repeats them so
        # the rule is explicit and the same for every architecture. Its own cap is loose so that
        # nothing is cut before NMS has run.
        with postprocess(self.model, conf, iou, max(max_det, 300)):
            raw = detect_batch(self.model, x)
        out = []
        for (h, w), r in zip(sizes, raw):
            # Back to the original image: the model saw it squashed to size x size.
            boxes = (r["boxes"] * torch.tensor([w / size, h / size, w / size, h / size])).clamp_min(0)
            boxes[:, 0::2] = boxes[:, 0::2].clamp_max(w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp_max(h)
            out.append({"size": [h, w], "detections": keep_detections({**r, "boxes": boxes}, conf, iou, max_det,
                                                                       self.classes)})
        return out


def save_drawn(path: str | Path, detections: list[dict[str, Any]], out: Path) -> str:
    """Write the image at ``path`` with ``detections`` drawn as the PNG ``out``; returns its path."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    from ...plots import draw_detections

    img = pil_to_tensor(open_image(path).convert("RGB"))
    return str(write_png(draw_detections(img, detections, min_side=0), out))


def format_prediction(r: dict[str, Any]) -> str:
    """One line per image: its objects, best first (``format_lines`` gives one line per box)."""
    found = ", ".join(f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['box'])}]" for d in r["detections"])
    return f"{r.get('path', 'image')}: {len(r['detections'])} object(s)" + (f": {found}" if found else "")


def predict_files(det: Detector, files: Iterable[str | Path], out_dir: str | Path | None = None,
                  conf: float | None = None, iou: float | None = None, max_det: int | None = None) -> list[dict[str, Any]]:
    """``det``'s results for image files (folders are expanded); with ``out_dir`` each image is also
    saved there with its boxes drawn (``saved`` in its result)."""
    results = det.predict(expand_inputs(files), conf=conf, iou=iou, max_det=max_det)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for r in results:
            stem, k = Path(r["path"]).stem, 2
            name = f"{stem}.png"
            while name in used:  # same file name from two folders
                name, k = f"{stem}_{k}.png", k + 1
            used.add(name)
            r["saved"] = save_drawn(r["path"], r["detections"], out / name)
    return results
