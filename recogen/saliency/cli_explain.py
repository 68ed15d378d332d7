"""``recogen explain RUN IMAGE... --method M``: argparse only here; the work is in
:mod:`recogen.saliency.api`, imported when the command runs (``recogen --help`` stays instant)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .methods import METHODS


def add_parser(sub, parser_class) -> None:
    """Add ``explain`` to the top-level subparsers ``sub``."""
    ex = sub.add_parser("explain", help="heat maps of where a classifier looks: Grad-CAM, Score-CAM, integrated gradients...")
    ex.add_argument("run", help="run folder or model.json of a classification run")
    ex.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    # No argparse choices: an unknown method gets the same one-line error from the registry as in Python.
    ex.add_argument("--method", default="gradcam", metavar="METHOD",
                    help=f"one of {', '.join(METHODS)} (default gradcam)")
    ex.add_argument("--class", dest="target", metavar="K",
                    help="class to explain, by name or index (default: each image's top class)")
    ex.add_argument("--layer", metavar="NAME",
                    help="module name in the network to explain (CAM methods; default: the last conv stage, "
                         "or a ViT's last block norm)")
    ex.add_argument("--out", metavar="DIR", help="folder for NAME.METHOD.png overlays and NAME.METHOD.npy maps "
                                                 "(default RUN/explain)")
    ex.add_argument("--json", action="store_true", help="print the results as JSON")
    ex.set_defaults(func=run_explain)


def default_out(run: str) -> Path:
    """``RUN/explain`` (beside the model.json when a file was given)."""
    p = Path(run)
    return (p if p.is_dir() else p.parent) / "explain"


def format_line(r: dict) -> str:
    """One printed line: the image, the method, the explained class and the top classes."""
    top = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"])
    t = r["target"]
    return f"{r.get('path', 'image')}: {r['method']} of {t['label']} ({t['prob']:.3f}) at {r['layer']}  [top: {top}]"


def run_explain(ns: argparse.Namespace) -> int:
    """Explain the images, write the files, print one line per image (or JSON)."""
    from ..data.images import expand_inputs
    from .api import explain

    out = Path(ns.out) if ns.out else default_out(ns.run)
    results = explain(ns.run, [str(f) for f in expand_inputs(ns.images)], method=ns.method, target=ns.target,
                      layer=ns.layer, out=out)
    rows = [e.to_json() for e in results]
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(format_line(r))
    print(f"wrote {len(rows)} overlay(s) (.png) and map(s) (.npy) to {out}")
    return 0
