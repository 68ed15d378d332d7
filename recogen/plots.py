"""Every drawing recogen makes: confusion matrices, training curves, image grids, precision-recall
curves, detection boxes, segmentation overlays, mask mosaics and per-class IoU bars.

matplotlib and torch are imported inside the functions: importing this module stays cheap, and the Agg
backend is forced before pyplot so nothing ever tries to open a window. Every file is written atomically
(a process killed mid-write leaves the previous plot, never half a file).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

_DPI = 120
_MAX_CELL_TEXT = 20  # above this many classes the numbers are unreadable and only add clutter
# Numeric history keys that are not quality metrics even when their values lie in [0, 1].
_NOT_METRICS = ("epoch", "step", "lr", "time_s")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, tight: bool = True, fmt: str | None = None) -> Path:
    """Save ``fig`` atomically as ``fmt`` (default: the suffix's format, PNG without one), close it and
    return the path; ``tight`` crops the figure to what is drawn."""
    from .utils import atomic_write

    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".") or "png"
    options = {"bbox_inches": "tight"} if tight else {}
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=_DPI, format=fmt, **options))
    _pyplot().close(fig)
    return path


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------ classification
def _confusion_figure(cm, classes: list[str], normalize: bool = True, title: str = "Confusion matrix"):
    """Build (without saving) the confusion-matrix figure; split out so tests can inspect its texts."""
    plt = _pyplot()
    cm = np.asarray(cm)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(classes) != k:
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(classes)} classes")
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        colours = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    else:
        colours = cm.astype(float)

    side = min(max(5.0, 0.3 * k + 2.0), 32.0)  # ~0.3 inch per class keeps 100 labels legible
    fontsize = max(4.0, min(10.0, 220.0 / max(k, 1)))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(colours, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="row fraction" if normalize else "count")
    ax.set_title(title)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_xticks(range(k), labels=classes, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(k), labels=classes, fontsize=fontsize)
    if k <= _MAX_CELL_TEXT:
        threshold = colours.max() / 2.0 if colours.size else 0.0
        for i in range(k):
            for j in range(k):
                colour = "white" if colours[i, j] > threshold else "black"
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=colour, fontsize=fontsize)
    return fig


def plot_confusion_matrix(cm, classes: list[str], path, normalize: bool = True,
                          title: str = "Confusion matrix") -> Path:
    """Save a confusion-matrix heat map as PNG and return its path.

    ``cm`` is a K x K count array (rows = true class, columns = predicted). Colours are row-normalised
    when ``normalize`` (so rare classes are as visible as common ones); raw counts are written in the
    cells for K <= 20. The figure grows with K and stays readable up to about 100 classes.
    """
    return _save(_confusion_figure(cm, classes, normalize, title), path)


def plot_history(history: list[dict], path) -> Path | None:
    """Plot training curves from per-epoch dicts and save them as PNG; return the path.

    Keys containing "loss" go on the left panel; every other numeric key whose values all lie in
    [0, 1] (val_acc, val_top5, ...) goes on the right panel; lr, epoch and timings are ignored.
    Missing or None values leave gaps. Returns None (and writes nothing) when there is nothing to plot.
    """
    fig = _history_figure(history)
    return None if fig is None else _save(fig, path)


def _history_figure(history: list[dict]):
    """Build (without saving) the training-curves figure, or None; split out so tests can inspect it."""
    if not history:
        return None
    epochs = [row["epoch"] if _is_number(row.get("epoch")) else i for i, row in enumerate(history)]
    keys = dict.fromkeys(k for row in history for k, v in row.items() if _is_number(v))
    series = {k: np.array([row[k] if _is_number(row.get(k)) else np.nan for row in history], dtype=float)
              for k in keys if k not in _NOT_METRICS and not k.startswith("lr") and not k.endswith("_s")}
    losses = [k for k in series if "loss" in k]
    metrics = [k for k in series if k not in losses and np.nanmin(series[k]) >= 0 and np.nanmax(series[k]) <= 1]
    panels = [(names, label) for names, label in ((losses, "loss"), (metrics, "metric")) if names]
    if not panels:
        return None

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    marker = "o" if len(history) <= 30 else None  # a single epoch would otherwise draw nothing
    for ax, (names, label) in zip(axes[0], panels):
        for name in names:
            ax.plot(epochs, series[name], marker=marker, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_image_grid(images, titles: list[str], path, colors: list[str] | None = None,
                    ncols: int = 8) -> Path:
    """Save a grid of images with a small coloured title each (e.g. green right, red wrong).

    ``images`` is an (N, C, H, W) array with C in {1, 3}: a uint8 numpy array, or anything with
    ``.numpy()`` such as a CPU torch tensor. Float images are taken to be in [0, 1].
    """
    if hasattr(images, "detach"):  # torch tensor, possibly on a GPU or requiring grad
        images = images.detach().cpu()
    array = np.asarray(images.numpy() if hasattr(images, "numpy") else images)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, C, H, W) with C in {{1, 3}}, got {array.shape}")
    n = array.shape[0]
    if n == 0 or len(titles) != n or (colors is not None and len(colors) != n):
        raise ValueError(f"need at least one image and one title (and colour) per image; got {n} images, "
                         f"{len(titles)} titles")
    if array.dtype != np.uint8:
        array = np.clip(array.astype(float), 0.0, 1.0)

    plt = _pyplot()
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.8 * ncols, 2.0 * nrows), squeeze=False)
    vmax = 255 if array.dtype == np.uint8 else 1.0
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= n:
            continue
        image = array[index].transpose(1, 2, 0)
        if image.shape[2] == 1:
            ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=vmax)
        else:
            ax.imshow(image)
        ax.set_title(titles[index], fontsize=7, color=colors[index] if colors else "black")
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------- detection
def plot_pr_curves(pr_curves: dict[str, dict[str, list]], path: str | Path, per_class: dict | None = None,
                   title: str = "Precision-recall at IoU 0.5") -> Path:
    """One PNG with a precision-recall line per class (AP@.5 in the legend when ``per_class`` is given)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    cmap = plt.get_cmap("tab20" if len(pr_curves) > 10 else "tab10")
    for i, (name, c) in enumerate(pr_curves.items()):
        pts = [(r, p) for r, p in zip(c["recall"], c["precision"]) if p is not None]
        ap = (per_class or {}).get(name, {}).get("ap50")
        ax.plot([r for r, _ in pts], [p for _, p in pts], color=cmap(i % cmap.N), lw=1.5,
                label=f"{name} {ap:.3f}" if ap is not None else name)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Recall", ylabel="Precision", title=title)
    ax.grid(alpha=0.3)
    if pr_curves:  # outside the axes: curves of a good model crowd the top right
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, ncol=2 if len(pr_curves) > 20 else 1,
                  title="class  AP@.5", frameon=False)
    return _save(fig, path, fmt="png")


def _colour(i: int) -> tuple[int, int, int]:
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab10"](i % 10)
    return int(r * 255), int(g * 255), int(b * 255)


def _font() -> str | None:
    """A TrueType font for box labels (PIL's built-in bitmap font is unreadably small): matplotlib's DejaVu."""
    from matplotlib import font_manager

    try:
        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:
        return None


def draw_detections(image: torch.Tensor, detections: list[dict[str, Any]], truth: dict[str, torch.Tensor] | None = None,
                    min_side: int = 256) -> torch.Tensor:
    """uint8 (3, H', W') image with predicted boxes ("label 0.87", coloured per class) and, if given,
    true boxes (thin white). Small images are upscaled to ``min_side`` so the labels stay legible."""
    import torch
    from torchvision.transforms.v2.functional import resize
    from torchvision.utils import draw_bounding_boxes

    h, w = image.shape[-2:]
    s = max(1.0, min_side / min(h, w))
    img = resize(image, [round(h * s), round(w * s)], antialias=True) if s > 1 else image
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    if truth is not None and len(truth["boxes"]):
        img = draw_bounding_boxes(img, truth["boxes"].float() * s, colors="white", width=1)
    if detections:
        boxes = torch.tensor([d["box"] for d in detections], dtype=torch.float32) * s
        text = [f"{d['label']} {d['score']:.2f}" for d in detections]
        img = draw_bounding_boxes(img, boxes, labels=text, colors=[_colour(d["index"]) for d in detections], width=2,
                                  font=_font(), font_size=max(11, min(img.shape[-2:]) // 18))
    return img


def plot_detections(images: torch.Tensor, preds: list[list[dict[str, Any]]], targets: list[dict[str, torch.Tensor]],
                    path: Path) -> Path:
    """A mosaic PNG of images with predicted (coloured, "label score") and true (white) boxes, at full
    resolution so that the labels stay readable."""
    import torch
    from torchvision.utils import make_grid

    from .data.images import write_png

    drawn = [draw_detections(img, p, t) for img, p, t in zip(images, preds, targets)]
    return write_png(make_grid(torch.stack(drawn), nrow=4, padding=4, pad_value=255), path)


# -------------------------------------------------------------------------------------- segmentation
def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, background: int | None = 0) -> np.ndarray:
    """Blend class colours into an RGB uint8 image (H, W, 3); ``background`` and 255 pixels stay as they are.

    ``image`` may also be grey (H, W) or (H, W, 1); ``mask`` holds a class index per pixel (H, W).
    """
    import torch
    from torchvision.utils import draw_segmentation_masks

    from .data.dense import IGNORE_INDEX
    from .data.images import palette

    image = np.asarray(image)
    img = image if image.ndim == 3 and image.shape[2] == 3 else np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    mask = torch.from_numpy(np.array(mask, copy=True))  # a copy: arrays of PIL images are read-only
    ids = [c for c in torch.unique(mask).tolist() if c != IGNORE_INDEX and c != background]
    if not ids:
        return np.array(img, dtype=np.uint8, copy=True)
    pal = palette()
    # In [0, 1] floats, so that the blend is rounded to the nearest uint8 (a uint8 image is truncated).
    chw = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255
    masks = mask[None] == torch.tensor(ids, dtype=mask.dtype)[:, None, None]
    out = draw_segmentation_masks(chw, masks, alpha=alpha, colors=[tuple(int(v) for v in pal[c]) for c in ids])
    return (out * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def plot_mask_mosaic(images: torch.Tensor, true: torch.Tensor, pred: torch.Tensor, classes: list[str], path) -> Path:
    """Save a mosaic of (image | true mask | predicted mask) rows in the class palette, with a legend.

    Solid masks rather than overlays: the objects of ``shapes`` and of many real scenes are coloured
    themselves, and a blended overlay hides which class was predicted. The tiles are composed into
    one array and drawn as one image (laying out dozens of separate axes is slow).
    """
    import torch
    from matplotlib.patches import Patch

    from .data.dense import IGNORE_INDEX
    from .data.images import palette

    plt = _pyplot()
    pal = palette()
    n, h, w = len(images), int(images.shape[-2]), int(images.shape[-1])
    per_row, gap = 2, max(2, w // 16)
    rows = max(1, -(-n // per_row))
    canvas = np.full((rows * (h + gap), per_row * 3 * (w + gap), 3), 255, dtype=np.uint8)
    for i in range(n):
        img = images[i].permute(1, 2, 0).numpy()
        tiles = (np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img, pal[true[i].numpy()], pal[pred[i].numpy()])
        r, c0 = i // per_row, 3 * (i % per_row)
        for j, tile in enumerate(tiles):
            y, x = r * (h + gap), (c0 + j) * (w + gap)
            canvas[y : y + h, x : x + w] = tile
    fig, ax = plt.subplots(figsize=(10, 10 * canvas.shape[0] / canvas.shape[1] + 0.9))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([(j + 0.5) * (w + gap) for j in range(3 * per_row)],
                  labels=["image", "true", "predicted"] * per_row, fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    shown = sorted(set(torch.cat([true[:n].flatten(), pred[:n].flatten()]).tolist()))
    handles = [Patch(facecolor=pal[c] / 255, edgecolor="black", linewidth=0.3,
                     label="ignore" if c == IGNORE_INDEX else classes[c]) for c in shown
               if c == IGNORE_INDEX or c < len(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, max(1, len(handles))), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.9 / fig.get_figheight())
    return _save(fig, path, tight=False, fmt="png")


def plot_per_class_iou(per_class: dict[str, dict[str, Any]], path, title: str = "IoU per class") -> Path:
    """Save a horizontal bar chart of the IoU of each class (classes absent from the split are marked)."""
    from .data.images import palette

    plt = _pyplot()
    names = list(per_class)
    ious = [per_class[n]["iou"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
    bars = ax.barh(range(len(names)), [v or 0.0 for v in ious], color=[palette(len(names))[i] / 255 for i in range(len(names))],
                   edgecolor="black", linewidth=0.5)
    for bar, v in zip(bars, ious):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, "absent" if v is None else f"{v:.3f}",
                va="center", fontsize=8)
    ax.set_yticks(range(len(names)), labels=names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("IoU")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, tight=False, fmt="png")
