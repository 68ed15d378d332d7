"""A self-contained HTML report for a run folder (the plots it embeds are drawn by :mod:`recogen.plots`).

Importing this module imports neither matplotlib nor torch: that happens only when a plot is drawn.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from recogen.errors import RunError

# Names of the plots that once lived here, kept for code that imports them from this module.
from .plots import _is_number, plot_history

_PERCENT_SUFFIXES = ("accuracy", "f1", "precision", "recall")


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
    from .utils import atomic_write_text, remove_stale_temporaries

    out = run_dir / "report.html"
    atomic_write_text(out, page)
    for written in (out, run_dir / "curves.png"):  # what earlier reports killed mid-write left
        remove_stale_temporaries(written)
    return out
