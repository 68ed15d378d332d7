"""Plots and a self-contained HTML report for a run folder.

matplotlib (and never torch) is imported inside the functions: importing this module stays cheap,
and the Agg backend is forced before pyplot so nothing ever tries to open a window.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from recogen.errors import RunError

_DPI = 120
_MAX_CELL_TEXT = 20  # above this many classes the numbers are unreadable and only add clutter
_PERCENT_SUFFIXES = ("accuracy", "f1", "precision", "recall")
# Numeric history keys that are not quality metrics even when their values lie in [0, 1].
_NOT_METRICS = ("epoch", "step", "lr", "time_s")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    from .utils import atomic_write

    path = Path(path)
    # atomically: a process killed mid-write leaves the previous plot, never half a file
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=_DPI, bbox_inches="tight", format=path.suffix.lstrip(".") or "png"))
    _pyplot().close(fig)
    return path


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


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def _format(key: str, value) -> str:
    if _is_number(value) and key.lower().endswith(_PERCENT_SUFFIXES) and 0 <= value <= 1:
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(path.stem.replace("_", " ").replace("-", " ").capitalize())
    return f'<figure><img src="data:image/png;base64,{data}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f2f2f2}td:not(:first-child){text-align:right}img{max-width:100%;height:auto}
figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}pre{background:#f6f6f6;padding:1em;overflow:auto}
.note{color:#a33}"""


def write_report(run_dir, title: str | None = None) -> Path:
    """Write ``run_dir/report.html``, one self-contained page, and return its path.

    Includes (each only if its file exists): a summary and per-class table from metrics.json,
    training curves from history.json (saved as curves.png in run_dir), every other PNG in run_dir,
    and config.yaml. Images are embedded as base64 data URIs; there are no external resources.
    Unreadable JSON files are reported on the page instead of failing the report.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist; pass the folder a training or eval run wrote")
    title = title or f"recogen report: {run_dir.resolve().name}"
    notes: list[str] = []

    def load(name: str):
        file = run_dir / name
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            notes.append(f"{name} could not be read: {error}")
            return None

    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>Run folder: <code>{html.escape(str(run_dir.resolve()))}</code></p>"]
    metrics = load("metrics.json")
    if metrics is None:  # data without a test split: the validation figures (marked so in the summary)
        metrics = load("metrics_val.json")
    if isinstance(metrics, dict):
        scalars = [[k, _format(k, v)] for k, v in metrics.items() if isinstance(v, (str, int, float, bool))]
        if scalars:
            parts += ["<h2>Summary</h2>", _table(["metric", "value"], scalars)]
        per_class = metrics.get("per_class")
        if isinstance(per_class, dict) and per_class:
            # The task's own columns (classify: precision, recall, f1, support; detect: ap, ap50...;
            # segment: iou, dice, support_pixels), in the order the metrics list them.
            stats_rows = [s for s in per_class.values() if isinstance(s, dict)]
            columns = list(dict.fromkeys(k for s in stats_rows for k, v in s.items() if v is None or _is_number(v)))
            rows = [[str(name)] + [_format(c, "-" if stats.get(c) is None else stats[c]) for c in columns]
                    for name, stats in per_class.items() if isinstance(stats, dict)]
            parts += ["<h2>Per class</h2>", _table(["class"] + columns, rows)]

    history = load("history.json")
    curves = plot_history(history, run_dir / "curves.png") if isinstance(history, list) else None
    pngs = sorted(p for p in run_dir.glob("*.png") if p.name != "curves.png")
    if curves or (run_dir / "curves.png").is_file():
        pngs.insert(0, run_dir / "curves.png")
    if pngs:
        parts += ["<h2>Figures</h2>"] + [_figure(p) for p in pngs]

    config = run_dir / "config.yaml"
    if config.is_file():
        parts += ["<h2>Config</h2>", f"<pre>{html.escape(config.read_text(encoding='utf-8'))}</pre>"]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]

    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    from .utils import atomic_write_text

    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out
