"""Procedural, seeded images of geometric shapes on noisy colour gradients; works offline.

Every image is drawn directly at the target size (PIL ImageDraw for the shape masks, numpy for the
background), so a few thousand 32 px images take well under a second and need no download.
:func:`render_scene` also returns each object's class, tight box and visible mask, so the same
generator serves detection and segmentation.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import DataError
from . import DATASETS
from .base import DataOptions, ImageSplits, finish_splits

SHAPE_CLASSES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ellipse", "diamond", "pentagon", "heart"]

_DEFAULT_COUNT = 3000
_MIN_COUNT = 20  # below two images per class a stratified train/val split is meaningless
_MIN_SIZE = 8  # smaller shapes rasterise to a handful of pixels that no longer tell classes apart
_MIN_VISIBLE = 0.4  # an object later objects hide more than this much of is not placed
_PLACE_TRIES = 20
_MIN_LUMA_DIFF = 50.0  # luma contrast to what lies underneath, so shapes survive --channels 1
_MIN_RGB_DIST = 100.0
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    """Vertices of a regular ``n``-gon on the unit circle."""
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star() -> np.ndarray:
    pts = _regular(10, -np.pi / 2)
    pts[1::2] *= 0.45  # inner vertices
    return pts


def _cross(half_width: float = 0.33) -> np.ndarray:
    w = half_width
    pts = np.array([(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1),
                    (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)], dtype=float)
    return pts / np.hypot(1, w)  # the outer corners touch the unit circle


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # image y points down
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.hypot(pts[:, 0], pts[:, 1]).max()


# Unit outlines (every vertex within the unit circle, centred on the origin) of the shapes whose
# proportions are fixed; ellipse and diamond get a random aspect ratio per object.
_OUTLINES = {
    "circle": _regular(32),
    "square": _regular(4, np.pi / 4),
    "triangle": _regular(3, -np.pi / 2),
    "star": _star(),
    "hexagon": _regular(6),
    "cross": _cross(),
    "pentagon": _regular(5, -np.pi / 2),
    "heart": _heart(),
}


def _outline(name: str, rng: np.random.Generator) -> np.ndarray:
    if name == "ellipse":
        return _regular(32) * [1.0, rng.uniform(0.45, 0.7)]
    if name == "diamond":
        # A rhombus with clearly unequal diagonals, so it never looks like a rotated square.
        return np.array([(1, 0), (0, 1), (-1, 0), (0, -1)], dtype=float) * [1.0, rng.uniform(0.5, 0.7)]
    return _OUTLINES[name]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth gradient: four random corner colours interpolated bilinearly, float32 HxWx3."""
    corners = rng.uniform(0, 255, size=(2, 2, 3)).astype(np.float32)
    u = np.linspace(0, 1, size, dtype=np.float32)[:, None]
    top = (1 - u) * corners[0, 0] + u * corners[0, 1]  # (W, 3)
    bottom = (1 - u) * corners[1, 0] + u * corners[1, 1]
    v = u[:, :, None]
    return (1 - v) * top + v * bottom


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that differs clearly, in luma and in RGB, from the mean colour ``under``."""
    cand = rng.uniform(0, 255, size=(16, 3)).astype(np.float32)  # one draw keeps the rng stream fixed
    luma_diff = np.abs((cand - under) @ _LUMA)
    ok = (luma_diff >= _MIN_LUMA_DIFF) & (np.linalg.norm(cand - under, axis=1) >= _MIN_RGB_DIST)
    return cand[int(np.argmax(ok))] if ok.any() else cand[int(np.argmax(luma_diff))]


def render_scene(
    rng: np.random.Generator,
    size: int,
    n_objects: int,
    classes: list[int] | None = None,
    min_frac: float = 0.15,
    max_frac: float = 0.6,
) -> tuple[np.ndarray, list[dict]]:
    """Draw up to ``n_objects`` shapes on a noisy gradient; return the image and the objects.

    Each object's class is drawn uniformly from ``classes`` (indices into :data:`SHAPE_CLASSES`;
    None: all of them), its diameter is ``min_frac``..``max_frac`` of ``size``, its rotation and
    colour are random, and it lies wholly inside the image. Later objects are drawn on top; a
    placement that would hide more than 60% of an earlier object is retried, and an object that
    finds no such place after 20 tries is left out, so crowded scenes may hold fewer objects.

    Returns ``(image, objects)``: ``image`` uint8 (size, size, 3) and, in drawing order, one dict
    per object with ``class_id`` (int), ``box`` ((x0, y0, x1, y1) floats, pixel edges, tight around
    the visible pixels) and ``mask`` (bool (size, size), the pixels of the object left visible).
    """
    pool = list(range(len(SHAPE_CLASSES))) if classes is None else list(classes)
    if not pool or not all(0 <= c < len(SHAPE_CLASSES) for c in pool):
        raise ValueError(f"classes must be a non-empty list of ids in 0..{len(SHAPE_CLASSES) - 1}, got {classes}")
    if not 0 < min_frac <= max_frac <= 1:
        raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")

    canvas = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int64)  # index of the object visible at each pixel
    areas: list[int] = []  # full (unoccluded) pixel count of each placed object
    class_ids: list[int] = []
    for _ in range(n_objects):
        class_id = pool[int(rng.integers(len(pool)))]
        for _ in range(_PLACE_TRIES):
            mask = _draw_mask(rng, SHAPE_CLASSES[class_id], size, min_frac, max_frac)
            if not mask.any():
                continue
            if areas:
                # Pixels each earlier object keeps if this one goes on top (bin 0: background).
                left = np.bincount(owner[~mask] + 1, minlength=len(areas) + 1)[1:]
                if (left < _MIN_VISIBLE * np.asarray(areas)).any():
                    continue
            break
        else:
            continue
        canvas[mask] = _contrasting_colour(rng, canvas[mask].mean(axis=0))
        owner[mask] = len(areas)
        areas.append(int(mask.sum()))
        class_ids.append(class_id)

    # Noise over shapes as well as background, so flat colour alone does not give a shape away.
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(3, 12))
    image = np.clip(canvas, 0, 255).round().astype(np.uint8)

    objects = []
    for k, class_id in enumerate(class_ids):
        visible = owner == k
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
        objects.append({"class_id": class_id, "box": box, "mask": visible})
    return image, objects


def _draw_mask(rng: np.random.Generator, name: str, size: int, min_frac: float, max_frac: float) -> np.ndarray:
    """Rasterise one randomly scaled, rotated and placed shape as a bool (size, size) mask."""
    radius = rng.uniform(min_frac, max_frac) * size / 2
    angle = rng.uniform(0, 2 * np.pi)
    centre = rng.uniform(radius, size - radius, size=2)  # the unit outline fits the unit circle
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = _outline(name, rng) @ rot.T * radius + centre
    img = Image.new("1", (size, size))
    ImageDraw.Draw(img).polygon([tuple(p) for p in pts.tolist()], fill=1)
    return np.asarray(img, dtype=bool)


def make_classification(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images with one large shape each: uint8 (n, 3, size, size) and int64 labels (n,).

    Classes are balanced (assigned round robin, then shuffled); the same seed gives the same arrays.
    """
    if size < _MIN_SIZE:
        raise ValueError(f"shape images need size >= {_MIN_SIZE}, got {size}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(SHAPE_CLASSES))
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels.tolist()):
        images[i] = render_scene(rng, size, 1, classes=[label], min_frac=0.5, max_frac=0.95)[0]
    return images.transpose(0, 3, 1, 2).copy(), labels


def _parse_count(arg: str | None) -> int:
    if arg is None or not arg.strip():
        return _DEFAULT_COUNT
    try:
        count = int(arg)
    except ValueError:
        count = None
    if count is None or count < _MIN_COUNT:
        raise DataError(
            f"bad shapes image count {arg!r}; use the form shapes:COUNT with a whole number >= {_MIN_COUNT}, "
            f"e.g. shapes:{_DEFAULT_COUNT}"
        )
    return count


@DATASETS.register(
    "shapes",
    description=f"procedural shapes (10 classes) on noisy gradients, shapes:COUNT images "
    f"(default {_DEFAULT_COUNT}) of 32 px, offline",
)
def shapes(arg: str | None, opts: DataOptions) -> ImageSplits:
    """Build the shapes classification set; ``arg`` is the image count (default 3000)."""
    count = _parse_count(arg)
    size = 32 if opts.image_size is None else opts.image_size
    if size < _MIN_SIZE:
        raise DataError(f"shapes images need --image-size >= {_MIN_SIZE}, got {size}")
    x, y = make_classification(count, size, opts.seed)
    return finish_splits("shapes", list(SHAPE_CLASSES), torch.from_numpy(x), torch.from_numpy(y), opts, hflip_ok=True)
