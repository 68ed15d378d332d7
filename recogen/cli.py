"""The ``recogen`` command line: ``recogen TASK ACTION [options]``.

Only argparse and the standard library are imported at start-up, so ``recogen --help`` is instant;
each action imports what it needs when it runs. User mistakes print one line and exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any, Callable

from .errors import UserError

# Help for the training options; the options themselves come from the ClassifyConfig fields.
TRAIN_HELP = {
    "data": "data set: digits, shapes[:COUNT], mnist, fashion-mnist, cifar10, cifar100, folder:PATH",
    "out": "run folder (default runs/classify/<data>[N])",
    "model": "registered model name (see `recogen models`), or auto",
    "model_kwargs": "JSON of extra constructor arguments, e.g. '{\"dropout\": 0.2}'",
    "pretrained": "start from the library's published weights (needs network or a filled cache)",
    "weights": "start from a local weights file (.safetensors, .pt or Lightning .ckpt)",
    "image_size": "resize images to this side in pixels (default: the data's own)",
    "channels": "1 (grayscale) or 3 (RGB); default: the data's own",
    "data_dir": "where downloadable data sets are stored",
    "val_fraction": "fraction held out for validation when the data has no val split",
    "test_fraction": "fraction held out for testing when the data has no test split",
    "limit": "use at most this many training images",
    "skip_bad_images": "skip unreadable images (with a warning and a count) instead of stopping",
    "augment": "augmentation preset: none, light, strong or auto",
    "epochs": "training epochs (default: chosen for the data size)",
    "batch_size": "batch size (default: chosen for the data size)",
    "lr": "peak learning rate (default: chosen for the model)",
    "optimizer": "adamw or sgd",
    "weight_decay": "weight decay",
    "label_smoothing": "label smoothing of the cross-entropy loss",
    "schedule": "learning-rate schedule: onecycle, cosine or none",
    "patience": "stop early after this many epochs without a better val accuracy",
    "seed": "random seed (data split, initialisation, augmentation)",
    "precision": "Lightning precision: 32-true, bf16-mixed, 16-mixed or auto",
    "accelerator": "cpu, gpu, mps or auto",
    "devices": "number of devices, or auto",
    "channels_last": "use channels-last memory format (default: on for CNNs)",
    "progress": "show the progress bar",
    "resume": "continue the run in --out from its last checkpoint",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _field_type(f: dataclasses.Field) -> Any:
    t = f.type if not isinstance(f.type, str) else eval(f.type, vars(typing), {})  # noqa: S307 - our own annotations
    args = [a for a in typing.get_args(t) if a is not type(None)] if isinstance(t, types.UnionType) else [t]
    return args[0]


def _add_config_options(p: argparse.ArgumentParser, cls: type) -> None:
    """One ``--kebab-case`` option per dataclass field; only options given on the command line override."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        t = _field_type(f)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": TRAIN_HELP.get(f.name)}
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif t is dict or typing.get_origin(t) is dict:
            p.add_argument(flag, type=_json_dict, metavar="JSON", **kw)
        else:
            p.add_argument(flag, type=t, metavar=f.name.upper(), **kw)


def _json_dict(s: str) -> dict:
    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return d


def _options(ns: argparse.Namespace, exclude: tuple[str, ...] = ("func", "config", "command", "action")) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if k not in exclude}


# ------------------------------------------------------------------------------------------ actions
def cmd_classify_train(ns: argparse.Namespace) -> int:
    from .tasks import classify

    classify.train(ns.config, **_options(ns))
    return 0


def cmd_classify_eval(ns: argparse.Namespace) -> int:
    from .metrics.classification import confusion_text
    from .tasks import classify

    m = classify.evaluate(ns.run, data=ns.data, split=ns.split, write=not ns.no_write)
    if ns.json:
        print(json.dumps({k: v for k, v in m.items() if k != "report_text"}, indent=2))
        return 0
    classes = list(m["per_class"])
    top5 = f", top-5 {m['top5_accuracy']:.4f}" if m["top5_accuracy"] is not None else ""
    print(f"{m['data']} {m['split']}: {m['num_images']} images, accuracy {m['accuracy']:.4f}{top5}, macro F1 {m['macro_f1']:.4f}\n")
    print(m["report_text"])
    print(confusion_text(m["confusion_matrix"], classes))
    if not ns.no_write:
        print(f"\nwrote {ns.run}/metrics{'' if m['split'] == 'test' else '_' + m['split']}.json and confusion_matrix.png")
    return 0


def cmd_classify_predict(ns: argparse.Namespace) -> int:
    from .tasks import classify

    clf = classify.load(ns.run)
    files = classify.expand_inputs(ns.images)
    results = clf.predict([str(f) for f in files], topk=ns.topk)
    if ns.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        alts = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["topk"][1:])
        print(f"{r['path']}: {r['label']} ({r['prob']:.3f})" + (f"  [{alts}]" if alts else ""))
    return 0


def cmd_models(ns: argparse.Namespace) -> int:
    from .models import list_models

    for name, desc in list_models(ns.task):
        print(f"{name:14s} {desc}")
    return 0


def cmd_datasets(ns: argparse.Namespace) -> int:
    from .data import list_datasets

    for name, desc in list_datasets():
        print(f"{name:14s} {desc}")
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(ns.out, progress=ns.progress)
    return 0


# ------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recogen", description="Train, evaluate and use deep models for image recognition and generation.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"recogen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    cl = sub.add_parser("classify", help="image classification: train, eval, predict")
    cl_sub = cl.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)

    from .config import ClassifyConfig

    tr = cl_sub.add_parser("train", help="train a classifier (every option has a data-aware default)")
    tr.add_argument("--config", metavar="YAML", help="read options from a YAML file; command-line options win")
    _add_config_options(tr, ClassifyConfig)
    tr.set_defaults(func=cmd_classify_train, config=None)

    ev = cl_sub.add_parser("eval", help="accuracy, top-5, per-class report and confusion matrix of a run")
    ev.add_argument("run", help="run folder")
    ev.add_argument("--data", help="evaluate on another data set with the same classes")
    ev.add_argument("--split", choices=["train", "val", "test"], help="split to evaluate (default test, else val)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--no-write", action="store_true", help="do not write metrics.json / confusion_matrix.png")
    ev.set_defaults(func=cmd_classify_eval)

    pr = cl_sub.add_parser("predict", help="top-k labels for images or folders of images")
    pr.add_argument("run", help="run folder or model.json")
    pr.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    pr.add_argument("--topk", type=int, default=5, help="how many labels to show (default 5)")
    pr.add_argument("--json", action="store_true", help="print results as JSON")
    pr.set_defaults(func=cmd_classify_predict)

    mo = sub.add_parser("models", help="list registered models")
    mo.add_argument("--task", help="only models of this task")
    mo.set_defaults(func=cmd_models)

    ds = sub.add_parser("datasets", help="list registered data sets")
    ds.set_defaults(func=cmd_datasets)

    de = sub.add_parser("demo", help="offline demo: train on digits, evaluate, predict, write report.html")
    de.add_argument("--out", default="runs/demo", help="run folder (default runs/demo; replaced if it exists)")
    de.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show the progress bar")
    de.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recogen`` console script."""
    ns = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = ns.func
    try:
        return func(ns)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch is saved (continue with --resume --out RUN)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
