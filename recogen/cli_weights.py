"""``recogen weights list|import`` and ``recogen models --source tv|timm --filter PATTERN`` (argparse only
at import time; the work is imported when a command runs)."""
from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the ``weights`` command (list, import) to the CLI's subparsers."""
    p = sub.add_parser("weights", help="published pretrained weights: list the cached files, import a hand-copied one")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class, required=True)
    ls = actions.add_parser("list", help="weight files in torch.hub's and the Hugging Face hub's caches")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_list)
    im = actions.add_parser("import", help="check a copied .pth/.safetensors file and place it where --pretrained looks")
    im.add_argument("path", help="the weights file (torchvision .pth or timm .safetensors/.bin)")
    im.add_argument("--model", required=True, metavar="tv:NAME|timm:NAME",
                    help="the architecture it belongs to (a classifier, or a torchvision detector or segmenter)")
    im.set_defaults(func=cmd_import)


def add_source_options(p: argparse.ArgumentParser) -> None:
    """``--source`` and ``--filter`` of ``recogen models``: list a library's architectures."""
    p.add_argument("--source", choices=["tv", "timm", "hf"],
                   help="list this library's architectures (use as tv:NAME or timm:NAME; hf: the image classifiers in the Hub cache)")
    p.add_argument("--filter", metavar="PATTERN", help="shell pattern on the names, e.g. '*convnext*'")
    p.add_argument("--pretrained", action="store_true", help="only architectures with published weights")


def print_source_models(ns: argparse.Namespace) -> int:
    """Print ``ns.source``'s architectures (``recogen models --source tv [--task detect]``) as ``tv:NAME``
    lines or JSON (name and task)."""
    from .models.sources import get_source, list_source_models

    task = getattr(ns, "task", None)
    names = [f"{ns.source}:{n}" for n in list_source_models(ns.source, ns.filter, getattr(ns, "pretrained", False), task)]
    if getattr(ns, "json", False):
        task_of = get_source(ns.source).task_of
        print(json.dumps([{"name": n, "task": task_of(n.partition(":")[2])} for n in names], indent=2))
    elif names:
        print("\n".join(names))
    else:
        print(f"no {ns.source} {task + ' ' if task else ''}model matches {ns.filter!r}")
    return 0


def cmd_list(ns: argparse.Namespace) -> int:
    from .models.sources import list_cached

    rows = list_cached()
    if ns.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no cached weights (torch.hub and Hugging Face hub caches are empty)")
    for r in rows if not ns.json else ():
        print(f"{r['model']:28s} {r['mb']:8.1f} MB  {r['file']}")
    return 0


def cmd_import(ns: argparse.Namespace) -> int:
    from .models.sources import import_weights

    dest = import_weights(ns.path, ns.model)
    print(f"imported {ns.path} as {ns.model}'s published weights: {dest}; `--model {ns.model} --pretrained` now loads it offline")
    return 0
