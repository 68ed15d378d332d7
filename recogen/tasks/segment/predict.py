"""Segmentation results: the Segmenter, the class-mask PNG and overlay it writes, and the service's answer."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from pydantic import Field

from ...data.images import encode_png, expand_inputs, open_image, palette, read_for_card, write_png
from ...plots import overlay
from ..params import Params
from ..predictor import Predictor
from .evaluation import predict_logits


def _background(classes: list[str]) -> int | None:
    return 0 if classes and classes[0] == "background" else None


def mask_image(mask: np.ndarray):
    """A class mask (H, W) as a palette ("P") PIL image: the pixel values are the class indices
    (``np.array(Image.open(p))`` gives the mask back) and any viewer shows them in colour."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").convert("P")
    img.putpalette(palette().ravel().tolist())
    return img


class SegmentParams(Params):
    """``POST /v1/segment`` parameters."""

    mask: bool = Field(False, title="Mask",
                       description="also return mask_png (class index per pixel) and overlay_png, base64 PNGs")
    alpha: float = Field(0.5, ge=0, le=1, title="Opacity",
                         description="opacity of the class colours in overlay_png")


class Segmenter(Predictor):
    """A trained segmenter, ready to predict. Get one with ``recogen.load(RUN)``.

    >>> seg = recogen.load("runs/segment/shapes")
    >>> r = seg.predict("scene.png")
    >>> r["size"], r["class_pixels"]            # mask r["mask"]: uint8 (H, W) at the image's own size
    ([128, 128], {'background': 13210, 'star': 3174})
    """

    task = "segment"

    def preprocess(self, image) -> torch.Tensor:
        """One image as a uint8 batch of one at the model's channels and input size."""
        return read_for_card(image, self.card)[0]

    def predict(self, images, alpha: float = 0.5):
        """Class mask of one image (returns a dict) or a list of them (a list of dicts).

        Each image may be a path, bytes, a PIL image or a uint8 numpy array. A result holds "path"
        (for a path), "size" [H, W], "class_pixels" {class: pixel count} of the classes present,
        "mask" (uint8 numpy (H, W) of class indices at the image's original size) and "overlay"
        (uint8 RGB (H, W, 3), the image with class colours blended in at ``alpha``).
        """

        def batch(srcs: list) -> list[dict[str, Any]]:
            pils = [open_image(src) for src in srcs]  # decode all first: a corrupt file fails before any work
            out = []
            for img in pils:
                # One image at a time: logits at the original size (K x H x W floats) can be large.
                logits = predict_logits(self.model, self.card, self.preprocess(img), out_size=(img.height, img.width))
                mask = logits[0].argmax(0).to(torch.uint8).numpy()
                out.append({**self._fields(mask), "mask": mask,
                            "overlay": overlay(np.array(img.convert("RGB")), mask, alpha, _background(self.classes))})
            return out

        return self.each(images, batch)

    def stream_batch(self, batch: dict[str, Any], out_dir: str | Path | None = None, alpha: float = 0.5) -> list[dict[str, Any]]:
        """The CLI's results (size, class_pixels; without "path") of a batch the streaming path
        (``tasks/stream.py``) decoded in its DataLoader workers: ``batch["x"]`` uint8 (B, C, S, S),
        ``batch["size"]`` (B, 2) original (H, W). The network sees the whole batch; each image's logits are
        then resized to its own size, as :meth:`predict` does. With ``out_dir`` the mask and overlay PNGs
        are written there as ``batch["name"]`` + "_mask.png" / "_overlay.png" ("mask_path", "overlay_path")."""
        mean = torch.tensor(self.card["normalize"]["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(self.card["normalize"]["std"]).view(1, -1, 1, 1)
        dev = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(((batch["x"].float().div_(255) - mean) / std).to(dev)).float().cpu()
        out = []
        for i, (h, w) in enumerate(batch["size"].tolist()):
            one = logits[i : i + 1]
            if tuple(one.shape[-2:]) != (h, w):  # as predict_logits resizes
                one = torch.nn.functional.interpolate(one, size=(h, w), mode="bilinear", align_corners=False)
            mask = one[0].argmax(0).to(torch.uint8).numpy()
            item = self._fields(mask)
            if out_dir is not None:
                img = np.array(open_image(batch["path"][i]).convert("RGB"))
                written = save_prediction({"mask": mask, "overlay": overlay(img, mask, alpha, _background(self.classes))},
                                          None, out_dir, batch["name"][i])
                item.update(mask_path=written["mask"], overlay_path=written["overlay"])
            out.append(item)
        return out

    def _fields(self, mask: np.ndarray) -> dict[str, Any]:
        """"size" [H, W] and "class_pixels" {class: pixel count} of the classes present in ``mask``."""
        counts = np.bincount(mask.ravel(), minlength=len(self.classes))
        return {"size": list(mask.shape), "class_pixels": {self.classes[i]: int(c) for i, c in enumerate(counts) if c}}


def save_prediction(result: dict[str, Any], image, out_dir: str | Path, stem: str, alpha: float = 0.5) -> dict[str, str]:
    """Write ``STEM_mask.png`` (class index per pixel, palette PNG) and ``STEM_overlay.png`` into ``out_dir``.

    ``result`` is one result of :meth:`Segmenter.predict`; ``image`` the image it was made from (used
    for the overlay when the result has none). Returns {"mask": path, "overlay": path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ov = result.get("overlay")
    if ov is None:
        ov = overlay(np.array(open_image(image).convert("RGB")), np.asarray(result["mask"], dtype=np.uint8), alpha)
    paths = {"mask": write_png(mask_image(result["mask"]), out / f"{stem}_mask.png"),
             "overlay": write_png(ov, out / f"{stem}_overlay.png")}
    return {k: str(v) for k, v in paths.items()}


def predict_files(run: str | Path, files: Iterable[str | Path], out_dir: str | Path | None = None,
                  device: str = "cpu", backend: str = "torch") -> list[dict[str, Any]]:
    """Segment image files (the CLI's ``predict``); JSON-able results, one per image.

    Each result holds "path", "size" [H, W] and "class_pixels"; with ``out_dir`` also "mask_path"
    and "overlay_path" of the PNGs written there. Every image is decoded before anything is written,
    so a corrupt file is reported (DataError naming it) with nothing written.
    """
    paths = expand_inputs(files)
    for p in paths:
        open_image(p)  # fail on a corrupt image before any output exists
    seg = Segmenter.load(run, device, backend)
    stems: dict[str, int] = {}
    results = []
    for p in paths:
        r = seg.predict(str(p))
        item = {k: r[k] for k in ("path", "size", "class_pixels")}
        if out_dir is not None:
            # Same-named files from different folders get _2, _3... instead of overwriting each other.
            k = stems[p.stem] = stems.get(p.stem, 0) + 1
            written = save_prediction(r, p, out_dir, p.stem if k == 1 else f"{p.stem}_{k}")
            item.update(mask_path=written["mask"], overlay_path=written["overlay"])
        results.append(item)
    return results


def serve_response(predictor: Segmenter, image, params: SegmentParams) -> dict[str, Any]:
    """The CLI's fields (size, class_pixels); with ``mask=true`` also the class mask (a palette PNG whose
    pixel values are class indices) and the colour overlay, both base64 PNGs at the image's size."""
    r = predictor.predict(image, alpha=params.alpha)
    out = {"size": r["size"], "class_pixels": r["class_pixels"]}
    if params.mask:
        out["mask_png"] = base64.b64encode(encode_png(mask_image(r["mask"]))).decode("ascii")
        out["overlay_png"] = base64.b64encode(encode_png(r["overlay"])).decode("ascii")
    return out
