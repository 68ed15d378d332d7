"""Promptable segmentation with Segment Anything (SAM): the mask of the object under some points, or
inside each of some boxes.

Loaded through transformers' ``SamModel`` and ``SamProcessor`` (which resize the prompts with the image
and bring the masks back to the image's own size). Results have the fields of ``segment predict``:
a class mask (0 = background, k = object k) whose PNG and overlay are written by the same code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..data.images import open_image
from ..errors import ConfigError
from .base import FoundationPredictor, unique_stems
from .options import parse_boxes, parse_points


class PromptSegmenter(FoundationPredictor):
    """A SAM model that segments what points or boxes given at call time point at.

    >>> sam = PromptSegmenter.load("facebook/sam-vit-base")
    >>> r = sam.predict("dog.jpg", points="320,240")
    >>> r["size"], r["class_pixels"], r["mask"].shape       # mask: 0 background, 1 the object
    ([480, 640], {'background': 250110, 'object': 57090}, (480, 640))
    """

    task = "segment"
    prefix = "sam"
    what = "promptable segmentation"
    model_class = "SamModel"
    processor_class = "SamProcessor"

    def predict(self, images, points: Any = None, boxes: Any = None, alpha: float = 0.5):
        """The mask of one image (returns a dict) or of a list (a list of dicts). ``points``: on one
        object (``"x,y;x,y"``; ``x,y,0`` = not on it); ``boxes``: one object per box; points together with
        one box refine that box. A result holds "size" [H, W], "classes" (background, object...),
        "class_pixels", "scores" (SAM's own estimate of each mask's IoU), "mask" (uint8 (H, W): 0 background,
        k object k) and "overlay" (the image with the objects coloured)."""
        from ..plots import overlay

        pts, bxs = parse_points(points), parse_boxes(boxes)
        if not pts and not bxs:
            raise ConfigError("--model sam: needs a prompt: --points \"X,Y;X,Y\" on the object or --boxes "
                              "\"X0,Y0,X1,Y1\" around it (pixels)")
        if pts and len(bxs) > 1:
            raise ConfigError("--points go with one box at most (they refine it); give several --boxes alone")
        objects = max(1, len(bxs))
        classes = ["background"] + (["object"] if objects == 1 else [f"object {k}" for k in range(1, objects + 1)])

        @torch.inference_mode()
        def one(src) -> dict[str, Any]:
            img = open_image(src).convert("RGB")
            _inside(img, pts, bxs)
            kw: dict[str, Any] = {}
            if pts:  # one object: all points prompt it together
                kw.update(input_points=[[[[x, y] for x, y, _ in pts]]], input_labels=[[[lab for _, _, lab in pts]]])
            if bxs:
                kw["input_boxes"] = [[list(b) for b in bxs]]
            enc = self.processor(images=img, return_tensors="pt", **kw)
            # One point alone is ambiguous (a part or the whole?): SAM then gives three masks and its IoU
            # estimate picks one, as its authors advise; more prompts make one mask enough.
            multi = len(pts) == 1 and not bxs
            out = self.model(**self.inputs(**enc), multimask_output=multi)
            masks = self.processor.image_processor.post_process_masks(
                out.pred_masks.cpu(), enc["original_sizes"], enc["reshaped_input_sizes"])[0]  # (objects, m, H, W)
            iou = out.iou_scores[0].float().cpu()  # (objects, m)
            best = iou.argmax(-1)
            mask = np.zeros((img.height, img.width), np.uint8)
            for k in range(masks.shape[0]):  # a later object wins where two overlap
                mask[masks[k, best[k]].numpy().astype(bool)] = k + 1
            counts = np.bincount(mask.ravel(), minlength=len(classes))
            return {"size": [img.height, img.width], "classes": classes,
                    "class_pixels": {classes[i]: int(c) for i, c in enumerate(counts) if c},
                    "scores": [round(float(iou[k, best[k]]), 5) for k in range(masks.shape[0])],
                    "mask": mask, "overlay": overlay(np.asarray(img), mask, alpha, background=0)}

        return self.each(images, lambda srcs: [one(src) for src in srcs])

    def predict_files(self, files: Iterable[str | Path], out_dir: str | Path | None = None,
                      **options: Any) -> list[dict]:
        """``predict`` for image files, JSON-able (without the arrays); with ``out_dir`` writes
        ``STEM_mask.png`` (class index per pixel) and ``STEM_overlay.png`` there, as ``recogen segment
        predict --save`` does ("mask_path", "overlay_path")."""
        from ..tasks.segment.predict import save_prediction

        files = [str(f) for f in files]
        out = []
        # One image at a time: a mask and an overlay at the image's own size are kept only until saved
        # (for hundreds of large photos, all of them at once would not fit in memory).
        for path, stem in zip(files, unique_stems(files)):
            r = self.predict(path, **options)
            item = {k: r[k] for k in ("path", "size", "class_pixels", "scores")}
            if out_dir is not None:
                written = save_prediction(r, r["path"], out_dir, stem)
                item.update(mask_path=written["mask"], overlay_path=written["overlay"])
            out.append(item)
        return out


def _inside(img, points: list, boxes: list) -> None:
    """Prompts must lie on the image: SAM would silently segment something else."""
    w, h = img.width, img.height
    bad = [f"{x:g},{y:g}" for x, y, _ in points if not (0 <= x < w and 0 <= y < h)]
    bad += [",".join(f"{v:g}" for v in b) for b in boxes if b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h]
    if bad:
        raise ConfigError(f"prompt(s) {'; '.join(bad)} lie outside the {w}x{h} image "
                          f"(x from 0 to {w}, y from 0 to {h})")
