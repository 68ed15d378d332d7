"""Drawing a saliency map: scale it to [0, 1], resize it to an image, colour it and blend it over the image."""
from __future__ import annotations

import numpy as np

COLORMAP = "jet"  # the colours Grad-CAM figures are usually read in (red = high)
ALPHA = 0.5  # weight of the heat map in the overlay


def unit_range(m: np.ndarray) -> np.ndarray:
    """``m`` as float32 scaled to [0, 1] (min to 0, max to 1); a constant or empty map becomes zeros.
    Non-finite values count as 0."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(m.min()), float(m.max())) if m.size else (0.0, 0.0)
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map resized to ``size`` = (height, width), bilinear; values stay within the input's range."""
    import torch
    import torch.nn.functional as F

    if tuple(m.shape) == tuple(size):
        return m.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def colorize(m: np.ndarray, cmap: str = COLORMAP) -> np.ndarray:
    """A map in [0, 1] as an RGB uint8 image (H, W, 3) through a matplotlib colour map."""
    from matplotlib import colormaps

    rgb = colormaps[cmap](np.clip(m, 0, 1))[..., :3]
    return (rgb * 255).round().astype(np.uint8)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 image (H, W), (H, W, 1) or (H, W, 3) as (H, W, 3): gray repeated into three channels."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def overlay(image: np.ndarray, m: np.ndarray, alpha: float = ALPHA, cmap: str = COLORMAP) -> np.ndarray:
    """The map ``m`` (any size, values in [0, 1]) resized to ``image`` (uint8, gray or RGB), coloured
    and blended over it: ``(1 - alpha) * image + alpha * colours``, uint8 (H, W, 3)."""
    rgb = as_rgb(image)
    heat = colorize(resize_map(m, rgb.shape[:2]), cmap)
    return ((1 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)).round().astype(np.uint8)


def draw_box(image: np.ndarray, box: list[float], index: int = 0) -> np.ndarray:
    """``image`` (uint8 (H, W, 3)) with the box ``[x1, y1, x2, y2]`` (its own pixels) outlined in the
    colour of class ``index`` (as the detection plots), 1 px wide per 100 px of the shorter side."""
    import torch
    from torchvision.utils import draw_bounding_boxes

    from ..plots import _colour

    h, w = image.shape[:2]
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    drawn = draw_bounding_boxes(t, torch.tensor([box], dtype=torch.float32), colors=[_colour(index)],
                                width=max(1, min(h, w) // 100))
    return drawn.permute(1, 2, 0).numpy()
