"""Box- and mask-aware augmentation for detection and segmentation batches (torchvision transforms v2).

Each image goes through one ``transforms.v2`` pipeline call together with its boxes
(``tv_tensors.BoundingBoxes``), its semantic mask and one binary mask per object
(``tv_tensors.Mask``), so a flip, shift, scale or rotation moves all of them by the same random
parameters. Parameters are drawn per image from torch's global RNG.

Why per-object masks: an affine box transform can only return the box around the rotated corners,
which grows with the angle (about 2 px per side for a 20 px object at 15 degrees). When the batch
has masks, each box is re-fitted to its object's transformed pixels (its class's pixels inside
the original box), so boxes stay tight; without masks v2's enclosing box is used.
"""
from __future__ import annotations

import torch

from .dense import IGNORE_INDEX
from .transforms import AugmentPreset

MIN_BOX_SIZE = 2.0  # px; narrower boxes after a transform are dropped with their labels


class DenseAugment:
    """Apply an :class:`AugmentPreset` to a detection/segmentation batch, one random draw per image.

    ``aug(images, boxes, labels, masks)`` takes uint8 images (B, C, H, W), per image float boxes
    (K, 4) xyxy in pixels and int64 labels (K,), and uint8 semantic masks (B, H, W) or None, and
    returns the same structure at the same size. Areas brought in by the affine are 0 in the
    image and 255 (ignore) in the mask. Boxes under ``MIN_BOX_SIZE`` px after the transform are
    dropped with their labels (``v2.SanitizeBoundingBoxes``). ``label_offset`` is the mask value
    of label 0: ``len(splits.seg_classes) - len(splits.classes)`` (1 for ``shapes``, ``coco:``,
    ``yolo:`` and ``masks:`` with a background class; 0 for ``masks:`` without one).
    Random erasing (``erase_p``) is not applied: it would hide objects whose boxes remain.

    >>> aug = DenseAugment(PRESETS["light"])                       # doctest: +SKIP
    >>> images, boxes, labels, masks = aug(images, boxes, labels, masks)
    """

    def __init__(self, preset: AugmentPreset, hflip_ok: bool = True, label_offset: int = 1):
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        self.preset = preset
        self.label_offset = label_offset
        steps: list = []
        if preset.degrees or preset.translate or preset.scale != (1.0, 1.0):
            steps.append(v2.RandomAffine(
                degrees=preset.degrees, translate=(preset.translate,) * 2 if preset.translate else None,
                scale=preset.scale, interpolation=v2.InterpolationMode.BILINEAR,
                fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}))
        if preset.hflip and hflip_ok:
            steps.append(v2.RandomHorizontalFlip())
        if preset.brightness or preset.contrast or preset.saturation:
            steps.append(v2.ColorJitter(preset.brightness, preset.contrast, preset.saturation))
        self.identity = not steps
        self.pipeline = v2.Compose(steps) if steps else None
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=MIN_BOX_SIZE, labels_getter=_labels_of)

    def __call__(self, images: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor],
                 masks: torch.Tensor | None = None):
        if self.identity:
            return images, boxes, labels, masks
        # Per-image ops on small tensors gain nothing from intra-op threads, and OpenMP threads
        # waiting on busy cores made them 5-10x slower (measured on 2 cores): run them on one.
        threads = torch.get_num_threads()
        if images.device.type == "cpu" and threads > 1:
            torch.set_num_threads(1)
        try:
            return self._batch(images, boxes, labels, masks)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    def _batch(self, images, boxes, labels, masks):
        from torchvision import tv_tensors

        b, _, h, w = images.shape
        out_images = torch.empty_like(images)
        out_masks = torch.empty_like(masks) if masks is not None else None
        moved = []
        for i in range(b):
            img, bx, m = self._one(images[i], boxes[i], labels[i], masks[i] if masks is not None else None)
            out_images[i] = img
            if out_masks is not None:
                out_masks[i] = m
            moved.append(bx)
        # One sanitize call for the whole batch (it costs about as much as the transform itself per
        # call): the image index travels with each box as a second label.
        counts = [len(x) for x in moved]
        owner = torch.repeat_interleave(torch.arange(b), torch.tensor(counts, dtype=torch.long))
        kept = self.sanitize({
            "boxes": tv_tensors.BoundingBoxes(torch.cat(moved).reshape(-1, 4), format="XYXY", canvas_size=(h, w)),
            "labels": (torch.cat([lab.reshape(-1) for lab in labels]).to(torch.long), owner),
        })
        kb, (kl, ko) = kept["boxes"].as_subclass(torch.Tensor), kept["labels"]
        out_boxes = [kb[ko == i] for i in range(b)]
        out_labels = [kl[ko == i].to(labels[i].dtype) for i in range(b)]
        return out_images, out_boxes, out_labels, out_masks

    def _one(self, image, boxes, labels, mask):
        """Transform one image with its boxes and mask; returns (image, boxes before sanitising, mask)."""
        from torchvision import tv_tensors

        h, w = image.shape[-2:]
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(boxes.reshape(-1, 4).float(), format="XYXY", canvas_size=(h, w)),
        }
        if mask is None:
            out = self.pipeline(sample)
            return out["image"].as_subclass(torch.Tensor), out["boxes"].as_subclass(torch.Tensor), None
        # The semantic mask and the per-object masks travel as one Mask (one kernel call).
        inst = self._instances(mask, sample["boxes"], labels)
        has_pixels = inst.flatten(1).any(1).bool()
        sample["mask"] = tv_tensors.Mask(torch.cat([mask.unsqueeze(0), inst]))
        out = self.pipeline(sample)
        bx = out["boxes"].as_subclass(torch.Tensor).clone()
        moved = out["mask"].as_subclass(torch.Tensor)
        if len(bx):
            # Fill (255) is not 1, so pixels brought in from outside never count as the object.
            fitted = _tight_boxes(moved[1:] == 1)
            bx[has_pixels] = fitted[has_pixels]
        return out["image"].as_subclass(torch.Tensor), bx, moved[0]

    def _instances(self, mask: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(K, H, W) uint8: 1 where object k's class value lies inside its box, else 0."""
        h, w = mask.shape
        if len(boxes) == 0:
            return torch.zeros((0, h, w), dtype=torch.uint8, device=mask.device)
        ys = torch.arange(h, device=mask.device).view(1, h, 1) + 0.5
        xs = torch.arange(w, device=mask.device).view(1, 1, w) + 0.5
        b = boxes.as_subclass(torch.Tensor).to(mask.device).view(-1, 4, 1, 1)
        inside = (xs > b[:, 0]) & (xs < b[:, 2]) & (ys > b[:, 1]) & (ys < b[:, 3])
        same = mask.unsqueeze(0) == (labels.to(mask.device) + self.label_offset).view(-1, 1, 1)
        # 1 marks the object; 0 elsewhere (its values differ from the 255 fill by design).
        return (inside & same).to(torch.uint8)


def _labels_of(sample: dict):
    return sample["labels"]


def _tight_boxes(inst: torch.Tensor) -> torch.Tensor:
    """Pixel-edge xyxy box of each (K, H, W) boolean mask; all zeros for an empty one."""
    k, h, w = inst.shape
    cols, rows = inst.any(1), inst.any(2)  # (K, W), (K, H)
    ar_w = torch.arange(w, device=inst.device, dtype=torch.float32)
    ar_h = torch.arange(h, device=inst.device, dtype=torch.float32)
    big = float(max(h, w))
    x0 = torch.where(cols, ar_w, big).amin(1)
    x1 = torch.where(cols, ar_w + 1, -1.0).amax(1)
    y0 = torch.where(rows, ar_h, big).amin(1)
    y1 = torch.where(rows, ar_h + 1, -1.0).amax(1)
    out = torch.stack([x0, y0, x1, y1], 1)
    return torch.where(cols.any(1, keepdim=True), out, torch.zeros_like(out))


__all__ = ["DenseAugment", "MIN_BOX_SIZE"]
