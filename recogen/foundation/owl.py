"""Open-vocabulary detection with OWL-ViT and OWLv2: boxes for objects named by text at call time.

Loaded through transformers' ``AutoModelForZeroShotObjectDetection`` and ``AutoProcessor``; boxes come
back through the processor's own post-processing (which undoes OWLv2's square padding), in the image's
pixels, then pass the same score threshold, class-wise NMS and ``max_det`` as a trained detector's
(:func:`recogen.tasks.detect.outputs.keep_detections`), so results have the fields of ``detect predict``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from ..data.images import open_image
from ..errors import ConfigError
from .base import FoundationPredictor, unique_stems
from .options import parse_labels, prompts

SCORE_THRESHOLD = 0.1  # transformers' default: OWL scores are sigmoid outputs, mostly well below 0.5
IOU, MAX_DET = 0.45, 100  # the trained detectors' defaults (tasks/detect/outputs.PREDICT_DEFAULTS)


class ZeroShotDetector(FoundationPredictor):
    """An OWL-ViT / OWLv2 model that finds the objects named by labels given at call time.

    >>> det = ZeroShotDetector.load("google/owlv2-base-patch16-ensemble")
    >>> det.predict("room.jpg", labels="cat,remote control")
    {'path': 'room.jpg', 'size': [480, 640], 'detections': [{'label': 'cat', 'index': 0, 'score': 0.71,
      'box': [12.0, 40.5, 298.2, 330.0]}, ...]}
    """

    task = "detect"
    prefix = "owl"
    what = "open-vocabulary object detection"
    model_class = "AutoModelForZeroShotObjectDetection"

    def predict(self, images, labels: Any = None, prompt_template: str | None = None,
                score_threshold: float | None = None, iou: float | None = None, max_det: int | None = None):
        """Detections of ``labels`` (``"cat,remote"`` or a list) in one image (returns a dict) or a list (a
        list of dicts): ``size`` [H, W] and ``detections`` [{label, index, score, box [x0, y0, x1, y1]}],
        best first. ``score_threshold`` (default 0.1), class-wise NMS at ``iou`` (default 0.45), at most
        ``max_det`` boxes (default 100)."""
        from ..tasks.detect.outputs import keep_detections

        labels = parse_labels(labels)
        texts = prompts(labels, prompt_template)
        conf = SCORE_THRESHOLD if score_threshold is None else score_threshold
        iou = IOU if iou is None else iou
        max_det = MAX_DET if max_det is None else max_det
        if not (0 <= conf <= 1 and 0 < iou <= 1 and max_det >= 1):
            raise ConfigError(f"need 0 <= score threshold <= 1, 0 < iou <= 1 and max_det >= 1; "
                              f"got {conf}, {iou}, {max_det}")

        @torch.inference_mode()
        def one(src) -> dict[str, Any]:
            img = open_image(src).convert("RGB")
            enc = self.processor(text=[texts], images=[img], return_tensors="pt", truncation=True)
            outputs = self.model(**self.inputs(**enc))
            raw = self.processor.post_process_grounded_object_detection(
                outputs, threshold=conf, target_sizes=[(img.height, img.width)])[0]
            boxes = raw["boxes"].float().cpu()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img.width)  # boxes may reach past the edges
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img.height)
            return {"size": [img.height, img.width],
                    "detections": keep_detections({"boxes": boxes, "scores": raw["scores"].float().cpu(),
                                                   "labels": raw["labels"].cpu()}, conf, iou, max_det, labels)}

        return self.each(images, lambda srcs: [one(src) for src in srcs])

    def predict_files(self, files: Iterable[str | Path], out_dir: str | Path | None = None,
                      **options: Any) -> list[dict]:
        """``predict`` for image files; with ``out_dir`` each image is also saved there with its boxes
        drawn (``saved`` in its result), as ``recogen detect predict --save`` does."""
        from ..tasks.detect.predict import save_drawn

        results = self.predict([str(f) for f in files], **options)
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            for r, stem in zip(results, unique_stems(r["path"] for r in results)):
                r["saved"] = save_drawn(r["path"], r["detections"], Path(out_dir) / f"{stem}.png")
        return results
