"""``recogen explain RUN IMAGE... --method M``: argparse only here; the work is in
:mod:`recogen.saliency.api`, imported when the command runs (``recogen --help`` stays instant)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .methods import METHODS


def add_parser(sub, parser_class) -> None:
    """Add ``explain`` to the top-level subparsers ``sub``."""
    ex = sub.add_parser("explain", help="heat maps of where a model looks: Grad-CAM, Score-CAM, integrated gradients... "
                                            "(classification, detection per box, segmentation per class)")
    ex.add_argument("run", help="run folder or model.json of a classification, detection or segmentation run")
    ex.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    # No argparse choices: an unknown method gets the same one-line error from the registry as in Python.
    ex.add_argument("--method", default="gradcam", metavar="METHOD",
                    help=f"one of {', '.join(METHODS)} (default gradcam)")
    ex.add_argument("--class", dest="target", metavar="K",
                    help="class to explain, by name or index (default: each image's top class; segmentation: its "
                         "most frequent non-background class; detection: keep only this class's boxes)")
    ex.add_argument("--layer", metavar="NAME",
                    help="module name in the network to explain, several comma-separated (CAM methods; default: "
                         "the last conv stage, a ViT's last block norm, a detector's pyramid levels, a U-Net's "
                         "last decoder stage)")
    ex.add_argument("--out", metavar="DIR", help="folder for NAME.METHOD.png overlays and NAME.METHOD.npy maps "
                                                 "(detection: NAME.METHOD.boxK.*, one per box; default RUN/explain)")
    ex.add_argument("--json", action="store_true", help="print the results as JSON")
    ex.set_defaults(func=run_explain)


def default_out(run: str) -> Path:
    """``RUN/explain`` (beside the model.json when a file was given)."""
    p = Path(run)
    return (p if p.is_dir() else p.parent) / "explain"


def format_line(r: dict) -> str:
    """One printed line: the image, the method, the explained class (or box) and the top classes.

    Classification ``a.png: gradcam of 7 (0.981) at features.10  [top: 7 0.981, 1 0.012, 9 0.004]``;
    detection, one line per box ``a.png: gradcam of circle (0.912) at LAYER  [box0: 12, 40, 98, 130]``;
    segmentation ``a.png: gradcam of star (0.953) at up.3  [pixels: background 71.2%, star 20.3%, ...]``
    (the explained class's mean probability over its region, then the pixel shares).
    """
    t = r["target"]
    head = f"{r.get('path', 'image')}: {r['method']} of {t['label']} ({t['prob']:.3f}) at {r['layer']}"
    if "box" in t:
        return f"{head}  [box{r['box_rank']}: {', '.join(f'{v:.0f}' for v in t['box'])}]"
    if "share" in t:
        return f"{head}  [{t['share']:.1%} of pixels; pixels: " + \
            ", ".join(f"{c['label']} {c['share']:.1%}" for c in r["top"]) + "]"
    top = ", ".join(f"{c['label']} {c['prob']:.3f}" for c in r["top"])
    return f"{head}  [top: {top}]"


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
