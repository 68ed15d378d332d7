"""The ``recogen`` command line: ``recogen TASK ACTION [options]``.

Only argparse and the standard library are imported at start-up, so ``recogen --help`` is instant;
each action imports what it needs when it runs. User mistakes print one line and exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing
from typing import Any, Callable

from .errors import UserError

# Help for the training options; the options themselves come from the ClassifyConfig fields.
TRAIN_HELP = {
    "data": "data set, e.g. digits, shapes[:COUNT], cifar10, folder:PATH, coco:JSON, yolo:PATH, masks:PATH (see `recogen datasets`)",
    "out": "run folder (default runs/<task>/<data>[N])",
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
    "patience": "stop early after this many epochs without a better validation score (default: on with a budget)",
    "budget": "wall-clock budget of the run, e.g. 90s, 5m, 1h30m, or none; the epochs and LR schedule are planned "
              "to end in it (default: the task's budget unless --epochs is given)",
    "seed": "random seed (data split, initialisation, augmentation)",
    "precision": "Lightning precision: 32-true, bf16-mixed, 16-mixed or auto",
    "accelerator": "cpu, gpu, mps or auto",
    "devices": "number of devices, or auto",
    "channels_last": "use channels-last memory format (default: on for CNNs)",
    "progress": "show the progress bar",
    "synthetic": "RUN:N adds N images per class from a class-conditional `generate` run to the training split",
    "resume": "continue the run in --out from its last checkpoint",
    # generation (GenerateConfig)
    "width": "base channel width of the generative network (default: per model)",
    "latent_dim": "size of the latent vector z (vae, dcgan)",
    "beta": "weight of the KL term of the VAE (beta-VAE; default 1)",
    "loss": "generate: GAN loss nonsaturating, hinge or wgan-gp; segment: ce or ce+dice (cross-entropy plus soft Dice)",
    "spectral_norm": "spectral normalisation in the GAN discriminator",
    "ema": "decay of the EMA of the generator/UNet weights used for sampling (0 turns it off)",
    "conditional": "class-conditional model (sample a class with `generate sample --class`)",
    "steps": "sampling steps of ddpm (default 15)",
    "sampler": "ddpm sampler: ddim (default) or dpm++ (DPM-Solver++ 2M, with thresholding)",
    "guidance": "classifier-free guidance scale of a conditional ddpm (1 = none)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):
        # An unknown option is reported by the (sub)command that did not know it, so the message points
        # at that command's help (`recogen classify train --help`), not at `recogen --help`.
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


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


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _options(ns: argparse.Namespace, exclude: tuple[str, ...] = ("func", "config", "command", "action")) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if k not in exclude}


# ------------------------------------------------------------------------------------------ actions
# Each task module (recogen.tasks.<task>) provides train, evaluate, print_metrics, predict_files and
# format_prediction; the CLI only parses options and prints.
TASK_CONFIGS = {"classify": "ClassifyConfig", "detect": "DetectConfig", "segment": "SegmentConfig",
                "generate": "GenerateConfig"}
TASK_HELP = {
    "classify": "image classification: train, eval, predict",
    "detect": "object detection: train, eval, predict",
    "segment": "semantic segmentation: train, eval, predict",
    "generate": "image generation (vae, dcgan, ddpm): train, sample, eval",
}


def _task(ns: argparse.Namespace):
    from .tasks import get_task

    return get_task(ns.command)


def cmd_train(ns: argparse.Namespace) -> int:
    _task(ns).train(ns.config, **_options(ns))
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    mod = _task(ns)
    m = mod.evaluate(ns.run, data=ns.data, split=ns.split, write=not ns.no_write)
    if ns.json:
        print(json.dumps({k: v for k, v in m.items() if k != "report_text"}, indent=2))
        return 0
    mod.print_metrics(m)
    if not ns.no_write:
        print(f"\nwrote metrics{'' if m['split'] == 'test' else '_' + m['split']}.json and plots to {ns.run}")
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    from .data.images import expand_inputs

    mod = _task(ns)
    kw = {k: getattr(ns, k) for k in PREDICT_OPTIONS[ns.command]}
    save = getattr(ns, "save", None)
    files = _readable_images(expand_inputs(ns.images), ns.skip_bad_images)
    results = mod.predict_files(ns.run, files, out_dir=save, backend=ns.backend, **kw)
    if ns.json:
        print(json.dumps(results, indent=2))
    else:
        # A task may print several lines per image (detect: one per box).
        lines = getattr(mod, "format_lines", lambda r: [mod.format_prediction(r)])
        for r in results:
            print("\n".join(lines(r)))
        if save:
            print(f"wrote {len(results)} result image(s) to {save}")
    return 0


def _readable_images(files: list, skip: bool) -> list:
    """``files`` whose images decode; an unreadable one stops predict naming it (before any model work),
    or with ``--skip-bad-images`` is left out with one warning line and a count."""
    from .data.images import open_image
    from .errors import DataError

    good, bad = [], []
    for f in files:
        try:
            open_image(f)
            good.append(f)
        except DataError as e:
            if not skip:
                raise DataError(f"{e}; fix or remove it, or pass --skip-bad-images to predict the others") from None
            bad.append(f)
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image(s): {', '.join(map(str, bad[:3]))}"
              f"{', ...' if len(bad) > 3 else ''}", file=sys.stderr)
    if not good:
        raise DataError(f"none of the {len(files)} image(s) could be read")
    return good


def cmd_export(ns: argparse.Namespace) -> int:
    from .export.cli_export import run_export

    return run_export(ns)


def cmd_models(ns: argparse.Namespace) -> int:
    from .models import list_models, model_meta

    rows = [{"name": name, "task": model_meta(name).get("task"), "description": desc} for name, desc in list_models(ns.task)]
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([14] + [len(r["name"]) for r in rows])
    for r in rows:
        print(f"{r['name']:{width}s} {r['task'] or '-':9s} {r['description']}")
    return 0


# The tasks that train on each kind of data set.
DATASET_KINDS = {"classification": ["classify", "generate"], "detection and segmentation": ["detect", "segment"]}


def cmd_datasets(ns: argparse.Namespace) -> int:
    from .data import list_datasets
    from .data.dense import list_dense_datasets

    kinds = {"classification": list_datasets(), "detection and segmentation": list_dense_datasets()}
    if ns.json:
        print(json.dumps([{"name": name, "kind": kind, "tasks": DATASET_KINDS[kind], "description": desc}
                          for kind, rows in kinds.items() for name, desc in rows], indent=2))
        return 0
    for kind, rows in kinds.items():
        print(f"{kind}:")
        for name, desc in rows:
            print(f"  {name:14s} {desc}")
    return 0


def cmd_data_convert(ns: argparse.Namespace) -> int:
    from .data.formats import convert

    out = convert(f"{ns.src_format}:{ns.src}", ns.to, ns.out)  # logs images and objects per split
    print(f"wrote {ns.to} data set to {out}")
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .errors import RunError
    from .report import write_report

    run = Path(ns.run)
    if run.is_dir() and not any((run / f).is_file() for f in ("config.yaml", "model.json", "history.json", "metrics.json")):
        raise RunError(f"{run} is not a run folder (no config.yaml, model.json, history.json or metrics.json); "
                       "pass the folder a training run wrote")
    print(f"wrote {write_report(run)}")
    return 0


def _sampler_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The sampler flags given on the command line (the model's saved defaults fill the rest)."""
    return {k: getattr(ns, k) for k in ("steps", "sampler", "guidance") if getattr(ns, k, None) is not None}


def cmd_generate_sample(ns: argparse.Namespace) -> int:
    from .tasks import generate

    out = generate.sample(ns.run, n=ns.n, seed=ns.seed, class_=ns.class_, out=ns.out, **_sampler_options(ns))
    print(f"wrote {ns.n} sample(s) to {out}")
    return 0


def cmd_generate_eval(ns: argparse.Namespace) -> int:
    from .tasks import generate

    m = generate.evaluate(ns.run, features=ns.features, features_weights=ns.features_weights, n=ns.n, seed=ns.seed,
                          split=ns.split, write=not ns.no_write, **_sampler_options(ns))
    if ns.json:
        print(json.dumps(m, indent=2))
    else:
        generate.print_metrics(m)
    return 0


def _add_sampler_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, help="sampling steps (ddpm; default: the model's)")
    p.add_argument("--sampler", choices=["ddim", "dpm++"], help="ddpm sampler (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (conditional ddpm)")


def _add_generate_actions(actions) -> None:
    """`generate sample` and `generate eval` (generation has no predict)."""
    sa = actions.add_parser("sample", help="draw samples: a PNG grid, or a folder of PNGs plus grid.png")
    sa.add_argument("run", help="run folder or model.json")
    sa.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sa.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sa.add_argument("--class", dest="class_", metavar="CLASS", help="class name or index (conditional models)")
    sa.add_argument("--out", metavar="PATH", help="PATH.png: the grid; otherwise a folder (default RUN/samples_seedS.png)")
    _add_sampler_flags(sa)
    sa.set_defaults(func=cmd_generate_sample)

    ev = actions.add_parser("eval", help="FID, KID, precision/recall against held-out real images, with the real-vs-real floor")
    ev.add_argument("run", help="run folder")
    ev.add_argument("--features", required=True, metavar="NAME[:ARG]",
                    help="feature extractor: classifier:RUN (a recogen classifier run) or inception")
    ev.add_argument("--features-weights", metavar="PATH", help="local weights file of the extractor (inception)")
    ev.add_argument("--n", type=int, default=1000,
                    help="generated images, and at most this many real ones (default 1000; fewer than 1000 real is warned about)")
    ev.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ev.add_argument("--split", choices=["train", "val", "test"],
                    help="real images to compare with (default: test, joined by val when test has fewer than --n; never train)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--no-write", action="store_true", help="do not write metrics.json")
    _add_sampler_flags(ev)
    ev.set_defaults(func=cmd_generate_eval)


# Tasks whose actions after `train` differ from eval + predict.
TASK_ACTIONS: dict[str, Callable[[Any], None]] = {"generate": _add_generate_actions}


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(ns.out, progress=ns.progress)
    return 0


PREDICT_FLAGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "classify": [("--topk", {"type": _positive_int, "default": 5, "help": "how many labels to show (default 5)"})],
    "detect": [
        ("--conf", {"type": float, "default": 0.25, "help": "minimum score (default 0.25)"}),
        ("--iou", {"type": float, "default": 0.45, "help": "IoU threshold of class-wise NMS (default 0.45)"}),
        ("--max-det", {"type": _positive_int, "default": 100, "dest": "max_det", "help": "most boxes per image (default 100)"}),
        ("--save", {"metavar": "DIR", "help": "write each image with its boxes drawn into DIR"}),
    ],
    "segment": [("--save", {"metavar": "DIR", "help": "write the class mask PNG and a colour overlay into DIR"})],
}
# The keyword arguments each task's predict_files takes from those flags (--save becomes out_dir).
PREDICT_OPTIONS = {t: [kw.get("dest", f.lstrip("-").replace("-", "_")) for f, kw in flags if f != "--save"]
                   for t, flags in PREDICT_FLAGS.items()}


# Commands that live in their own package: module -> ``add_parser(sub, parser_class)``. Each module
# imports only argparse at load time (the work is imported when the command runs).
COMMAND_MODULES: list[str] = ["recogen.serve.cli_serve", "recogen.edit.cli_edit"]


# ------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recogen", description="Train, evaluate and use deep models for image recognition and generation.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"recogen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    from . import config as config_mod

    from .tasks import TASKS

    for task in TASKS:
        cfg_name = TASK_CONFIGS[task]
        tp = sub.add_parser(task, help=TASK_HELP[task])
        actions = tp.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)

        tr = actions.add_parser("train", help="train a model (every option has a data-aware default)")
        tr.add_argument("--config", metavar="YAML", help="read options from a YAML file; command-line options win")
        _add_config_options(tr, getattr(config_mod, cfg_name))
        tr.set_defaults(func=cmd_train, config=None)
        if task in TASK_ACTIONS:
            TASK_ACTIONS[task](actions)
            continue

        ev = actions.add_parser("eval", help="metrics and plots of a run on its test split (or another)")
        ev.add_argument("run", help="run folder")
        ev.add_argument("--data", help="evaluate on another data set with the same classes")
        ev.add_argument("--split", choices=["train", "val", "test"], help="split to evaluate (default test, else val)")
        ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
        ev.add_argument("--no-write", action="store_true", help="do not write metrics.json and plots")
        ev.set_defaults(func=cmd_eval)

        pr = actions.add_parser("predict", help="predict images or folders of images")
        pr.add_argument("run", help="run folder or model.json")
        pr.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
        pr.add_argument("--json", action="store_true", help="print results as JSON")
        for flag, kw in PREDICT_FLAGS[task]:
            pr.add_argument(flag, **kw)
        pr.add_argument("--skip-bad-images", action="store_true",
                        help="leave out unreadable images (one warning with a count) instead of stopping")
        pr.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                        help="torch (default) or onnx: run RUN/model.onnx (made by `recogen export`) with onnxruntime")
        pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="export a trained run to ONNX (checked with onnxruntime), TorchScript or safetensors")
    ex.add_argument("run", help="run folder or model.json")
    ex.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "safetensors"], help="default onnx")
    ex.add_argument("--out", metavar="PATH", help="output file or folder (default RUN/model.onnx, RUN/model.pt)")
    ex.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    ex.add_argument("--force", action="store_true", help="replace an existing output file")
    ex.set_defaults(func=cmd_export)

    mo = sub.add_parser("models", help="list registered models: name, task, description")
    mo.add_argument("--task", choices=list(TASKS), help="only models of this task")
    mo.add_argument("--json", action="store_true", help="print [{name, task, description}, ...] as JSON")
    mo.set_defaults(func=cmd_models)

    ds = sub.add_parser("datasets", help="list registered data sets")
    ds.add_argument("--json", action="store_true", help="print [{name, kind, tasks, description}, ...] as JSON")
    ds.set_defaults(func=cmd_datasets)

    rp = sub.add_parser("report", help="(re)write RUN/report.html: metrics, per-class table, curves, figures, config")
    rp.add_argument("run", help="run folder")
    rp.set_defaults(func=cmd_report)

    da = sub.add_parser("data", help="data set tools")
    da_sub = da.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    cv = da_sub.add_parser("convert", help="convert a detection data set between YOLO and COCO layouts")
    cv.add_argument("--from", dest="src_format", required=True, choices=["yolo", "coco"], help="source format")
    cv.add_argument("--to", required=True, choices=["yolo", "coco"], help="target format")
    cv.add_argument("src", help="source: a YOLO folder (with data.yaml) or a COCO annotations.json")
    cv.add_argument("out", help="new folder to write (must not exist or be empty)")
    cv.set_defaults(func=cmd_data_convert)

    de = sub.add_parser("demo", help="offline demo: train on digits, evaluate, predict, write report.html")
    de.add_argument("--out", default="runs/demo",
                    help="run folder (default runs/demo; a previous demo run there is replaced, any other non-empty folder is refused)")
    de.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show the progress bar")
    de.set_defaults(func=cmd_demo)

    import importlib

    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_parser(sub, _Parser)
    return p


class _StdStream(logging.StreamHandler):
    """A handler writing to the current ``sys.stdout`` or ``sys.stderr`` (looked up at each line, so
    redirections made after it was added, pytest's capture included, are honoured)."""

    def __init__(self, name: str, level: int):
        super().__init__()
        self.name_ = name
        self.setLevel(level)
        self.setFormatter(logging.Formatter("%(message)s"))
        if name == "stdout":  # INFO lines (progress: one line per epoch, counts) on stdout
            self.addFilter(lambda r: r.levelno < logging.WARNING)

    @property
    def stream(self):
        return getattr(sys, self.name_)

    @stream.setter
    def stream(self, value):  # set by StreamHandler.__init__; the current sys stream is used instead
        pass


def _show_logs() -> None:
    """Show the library's ``recogen`` log lines: INFO on stdout, warnings on stderr (so --json stays clean)."""
    log = logging.getLogger("recogen")
    if not any(isinstance(h, _StdStream) for h in log.handlers):
        log.addHandler(_StdStream("stdout", logging.INFO))
        log.addHandler(_StdStream("stderr", logging.WARNING))
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recogen`` console script."""
    ns = build_parser().parse_args(argv)
    _show_logs()
    func: Callable[[argparse.Namespace], int] = ns.func
    try:
        return func(ns)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        # TrainingInterrupted says what training saved; elsewhere nothing is claimed.
        print(str(e) or "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
