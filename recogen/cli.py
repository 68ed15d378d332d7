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
    from .config import OPTION_HELP

    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        t = _field_type(f)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": OPTION_HELP.get(f.name)}
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
# Every task comes from its registered spec (recogen.tasks): its config, flags, evaluation, prediction
# and printing. The CLI only parses options and prints what the spec formats.
def _task(ns: argparse.Namespace):
    from .tasks import get_task

    return get_task(ns.command)


def cmd_train(ns: argparse.Namespace) -> int:
    from .hub import preflight

    preflight(getattr(ns, "data", None), getattr(ns, "model", None))  # hf: references, before torch loads
    _task(ns).train(ns.config, **_options(ns))
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from .foundation.cli import evaluate, selected

    task = _task(ns)
    model = selected(ns, task, "eval")  # --model PREFIX:ID_OR_DIR: a foundation model, else the RUN
    m = task.evaluate(ns.run, data=ns.data, split=ns.split, write=not ns.no_write) if model is None else evaluate(ns, model)
    if ns.json:
        print(json.dumps({k: v for k, v in m.items() if k != "report_text"}, indent=2))
        return 0
    print(task.format_metrics(m))
    if model is not None:
        print(f"\nwrote metrics.json and confusion_matrix.png to {ns.out}" if ns.out and not ns.no_write
              else "\n(--out DIR writes metrics.json and confusion_matrix.png)")
    elif not ns.no_write:
        print(f"\nwrote metrics{'' if m['split'] == 'test' else '_' + m['split']}.json and plots to {ns.run}")
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    from .foundation.cli import selected

    task = _task(ns)
    model = selected(ns, task, "predict")  # --model PREFIX:ID_OR_DIR: a foundation model, else the RUN
    from .data.images import expand_inputs  # after: a model that cannot be had fails before torch loads
    kw = {f.dest: getattr(ns, f.dest) for f in task.predict_flags if f.dest != "save"}
    save = getattr(ns, "save", None)
    if ns.out is not None:
        return _predict_stream(ns, task, kw, save)
    given = [flag for flag, dest in STREAM_OPTIONS if getattr(ns, dest) not in (None, False)]
    if given:
        from .errors import ConfigError

        raise ConfigError(f"{', '.join(given)} only work with --out PATH.jsonl (streaming into a file)")
    files = _readable_images(expand_inputs(ns.images), ns.skip_bad_images)
    if model is None:
        results = task.predict_files(ns.run, files, out_dir=save, backend=ns.backend, **kw)
    else:
        results = model.predict_files(files, out_dir=save)
    if ns.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print("\n".join(task.format_lines(r)))  # a task may print several lines per image
        if save:
            print(f"wrote {len(results)} result image(s) to {save}")
    return 0


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


# The options of streaming predict (--out): (flag, argparse dest).
STREAM_OPTIONS = [("--batch-size", "batch_size"), ("--workers", "workers"), ("--devices", "devices"),
                  ("--accelerator", "accelerator"), ("--overwrite", "overwrite")]


def _predict_stream(ns: argparse.Namespace, task, kw: dict, save) -> int:
    """``predict --out PATH.jsonl``: stream the images through DataLoader workers and the model into the
    file, one JSON line per image, resuming where a previous run stopped (``recogen.tasks.stream``)."""
    from .errors import ConfigError

    if ns.json:
        raise ConfigError("--out writes JSON lines into its file; drop --json")
    given = {dest: getattr(ns, dest) for _, dest in STREAM_OPTIONS if getattr(ns, dest) is not None}
    s = task.predict_stream(ns.run, ns.images, ns.out, skip_bad=ns.skip_bad_images, out_dir=save, backend=ns.backend,
                            **given, **kw)
    if s is None:  # another process of a --devices N run: the first one reports
        return 0
    bad = f", {s['errors']} unreadable (error lines)" if s["errors"] else ""
    before = f" ({s['before']} were there already)" if s["before"] else ""
    print(f"wrote {s['written']} result line(s){bad} to {s['out']}{before}: {s['images']} image(s) in all")
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

    if ns.source:  # a library's architectures, used as tv:NAME / timm:NAME
        from .cli_weights import print_source_models

        return print_source_models(ns)

    rows = [{"name": name, "task": model_meta(name).get("task"), "description": desc} for name, desc in list_models(ns.task)]
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([14] + [len(r["name"]) for r in rows])
    for r in rows:
        print(f"{r['name']:{width}s} {r['task'] or '-':9s} {r['description']}")
    return 0


# The kinds of data set (a task's spec names its data kind) and how `recogen datasets` titles them.
DATA_KINDS = {"images": "classification", "dense": "detection and segmentation"}


def cmd_datasets(ns: argparse.Namespace) -> int:
    from .data import list_datasets
    from .data.dense import list_dense_datasets
    from .tasks import all_tasks

    kinds = {"classification": list_datasets(), "detection and segmentation": list_dense_datasets()}
    users = {title: [t.name for t in all_tasks().values() if DATA_KINDS[t.data_kind] == title] for title in kinds}
    if ns.json:
        print(json.dumps([{"name": name, "kind": kind, "tasks": users[kind], "description": desc}
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


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(ns.out, progress=ns.progress)
    return 0


# Commands that live in their own package: module -> ``add_parser(sub, parser_class)``. Each module
# imports only argparse at load time (the work is imported when the command runs).
COMMAND_MODULES: list[str] = ["recogen.serve.cli_serve", "recogen.edit.cli_edit", "recogen.saliency.cli_explain",
                              "recogen.cli_weights"]


# ------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recogen", description="Train, evaluate and use deep models for image recognition and generation.")
    from ._version import __version__

    p.add_argument("--version", action="version", version=f"recogen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    from .foundation.cli import add_options as add_model_options  # --model PREFIX:ID_OR_DIR of each task
    from .tasks import all_tasks
    from .tasks.spec import positive_int

    for task in all_tasks().values():
        tp = sub.add_parser(task.name, help=task.help)
        actions = tp.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)

        tr = actions.add_parser("train", help="train a model (every option has a data-aware default)")
        tr.add_argument("--config", metavar="YAML", help="read options from a YAML file; command-line options win")
        _add_config_options(tr, task.config)
        tr.set_defaults(func=cmd_train, config=None)
        if task.add_actions(actions, _Parser):
            continue

        ev = actions.add_parser("eval", help="metrics and plots of a run on its test split (or another)")
        ev.add_argument("run", nargs="?", help="run folder (or --model, below)")
        ev.add_argument("--data", help="evaluate on another data set with the same classes")
        ev.add_argument("--split", choices=["train", "val", "test"], help="split to evaluate (default test, else val)")
        ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
        ev.add_argument("--no-write", action="store_true", help="do not write metrics.json and plots")
        add_model_options(ev, task.name, "eval")
        ev.set_defaults(func=cmd_eval)

        pr = actions.add_parser("predict", help="predict images or folders of images")
        pr.add_argument("run", nargs="?", help="run folder or model.json (or --model, below)")
        pr.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
        pr.add_argument("--json", action="store_true", help="print results as JSON")
        for f in task.predict_flags:
            pr.add_argument(f.flag, **f.kwargs)
        pr.add_argument("--skip-bad-images", action="store_true",
                        help="leave out unreadable images (one warning with a count) instead of stopping; "
                             "with --out each becomes an error line {\"path\", \"error\"}")
        pr.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                        help="torch (default) or onnx: run RUN/model.onnx (made by `recogen export`) with onnxruntime")
        st = pr.add_argument_group(
            "streaming into a file (any number of images: decoded by DataLoader workers, written as they come, "
            "resumed where a run stopped)")
        st.add_argument("--out", metavar="PATH.jsonl",
                        help="write one JSON result per line (the --json fields, with \"path\") into this file, "
                             "in input order; images already in it are skipped (resume)")
        st.add_argument("--batch-size", type=positive_int, help="images per batch (default 64)")
        st.add_argument("--workers", type=_non_negative_int,
                        help="DataLoader processes decoding images, per device (default min(4, CPUs / devices); 0: "
                             "decode in the main process)")
        st.add_argument("--devices", type=positive_int,
                        help="processes (GPUs, or on a CPU N processes) sharing the images (default 1)")
        st.add_argument("--accelerator", choices=["auto", "cpu", "gpu", "mps"], help="default auto (a GPU if there is one)")
        st.add_argument("--overwrite", action="store_true", help="start again: replace the file instead of resuming")
        add_model_options(pr, task.name, "predict")
        pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="export a trained run to ONNX (checked with onnxruntime), TorchScript or safetensors")
    ex.add_argument("run", help="run folder or model.json")
    ex.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "safetensors"], help="default onnx")
    ex.add_argument("--out", metavar="PATH", help="output file or folder (default RUN/model.onnx, RUN/model.pt)")
    ex.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    ex.add_argument("--force", action="store_true", help="replace an existing output file")
    ex.set_defaults(func=cmd_export)

    mo = sub.add_parser("models", help="list registered models: name, task, description")
    mo.add_argument("--task", choices=list(all_tasks()), help="only models of this task")
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

    importlib.import_module("recogen.cli_weights").add_source_options(mo)  # models --source tv|timm --filter PATTERN
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
