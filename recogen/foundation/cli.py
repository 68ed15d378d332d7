"""The ``--model PREFIX:ID_OR_DIR`` options of ``recogen TASK predict`` and ``eval``, built from the
table (:mod:`.registry`) for every task a family serves: argparse only here, the work is imported when
a command runs, so ``recogen --help`` stays instant.

The CLI asks :func:`add_options` for a task's extra options and :func:`selected` which model a
command names; nothing in it knows any one family.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .hf import resolve
from .registry import ZeroShot, for_task, model_help, parse_model


def add_options(p: argparse.ArgumentParser, task: str, action: str) -> None:
    """Give ``task``'s ``predict`` (or ``eval``) parser ``--model`` and the flags of its families."""
    fams = [z for z in for_task(task) if action == "predict" or z.evaluates]
    if not fams:
        return
    g = p.add_argument_group("foundation models (no training: --model instead of RUN)")
    g.add_argument("--model", metavar="PREFIX:ID_OR_DIR", help=model_help(task))
    have = set(p._option_string_actions)  # argparse keeps no public list of a parser's flags
    for z in fams:
        for f in z.flags:
            if f.flag not in have:  # two families of one task may share a flag (--labels)
                g.add_argument(f.flag, **{**f.kwargs, "default": None})
                have.add(f.flag)
    if action == "eval":
        g.add_argument("--out", metavar="DIR", help="--model: write metrics.json and confusion_matrix.png into DIR")


def own_flags(task: str) -> list[tuple[str, str]]:
    """(flag, dest) of every family option of ``task``: given without ``--model`` they are a mistake."""
    return list(dict.fromkeys((f.flag, f.dest) for z in for_task(task) for f in z.flags))


class Selected:
    """The foundation model a command names, with the options that apply to it."""

    def __init__(self, entry: ZeroShot, source: Any, options: dict[str, Any]):
        self.entry, self.source, self.options = entry, source, options

    def load(self):
        """The family's predictor (imports torch and transformers)."""
        return self.entry.load(self.source)

    def predict_files(self, files: list, out_dir: str | Path | None = None) -> list[dict[str, Any]]:
        return self.load().predict_files(files, out_dir=out_dir, **self.options)


def selected(ns: argparse.Namespace, task, action: str) -> Selected | None:
    """The ``--model`` a ``predict``/``eval`` command names (None: a RUN folder). Checks that exactly one of
    RUN and ``--model`` is given, and that every option given applies to what runs; with ``--model`` on
    ``predict`` the first positional (parsed as RUN) is an image."""
    model = getattr(ns, "model", None)
    extra = own_flags(task.name) + ([("--out", "out")] if action == "eval" else [])  # predict's --out: streaming
    if model is None:
        given = [flag for flag, dest in extra if getattr(ns, dest, None) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to foundation models: add --model PREFIX:ID_OR_DIR "
                              f"(see `recogen {task.name} {action} --help`)")
        if ns.run is None:
            what = "RUN and images" if action == "predict" else "RUN"
            can = [z for z in for_task(task.name) if action == "predict" or z.evaluates]
            raise ConfigError(f"{task.name} {action} needs {what}: a run folder (or model.json)"
                              + (", or --model PREFIX:ID_OR_DIR for a foundation model" if can else ""))
        return None
    entry, location = parse_model(model, task.name)
    shared = _predict_options(ns, task, entry) if action == "predict" else _eval_options(ns, task, entry)
    own = {f.dest for f in entry.flags}
    wrong = [flag for flag, dest in extra if dest not in own and dest != "out" and getattr(ns, dest, None) is not None]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} do(es) not apply to {entry.prefix}: models")
    options = {**shared, **{f.dest: getattr(ns, f.dest) for f in entry.flags if getattr(ns, f.dest, None) is not None}}
    dests = {f.flag: f.dest for f in entry.flags}
    for group in entry.needs if action == "predict" else ():
        if not any(dests[flag] in options for flag in group):
            raise ConfigError(f"--model {entry.prefix}: needs {' or '.join(group)} "
                              f"(see `recogen {task.name} predict --help`)")
    # Where the files are is settled now, so offline a missing model fails before any image is read.
    return Selected(entry, resolve(location, entry.prefix), options)


def _predict_options(ns: argparse.Namespace, task, entry: ZeroShot) -> dict[str, Any]:
    """``predict --model``: the first positional (parsed as RUN) is an image; the streaming and ONNX
    options are for runs; the task's own flags that the family takes are passed on."""
    if ns.run is not None and _is_run(ns.run):
        raise ConfigError(f"give a RUN folder or --model, not both ({ns.run} is a run)")
    ns.images = ([ns.run] if ns.run is not None else []) + list(ns.images)
    ns.run = None
    if getattr(ns, "out", None) is not None:
        raise ConfigError("--out (streaming into a file) works with RUN folders; with --model use --json")
    if getattr(ns, "backend", "torch") != "torch":
        raise ConfigError(f"--backend {ns.backend} runs a RUN's export; --model runs with torch")
    return _task_options(ns, task, entry)


def _eval_options(ns: argparse.Namespace, task, entry: ZeroShot) -> dict[str, Any]:
    """``eval --model``: a family that evaluates, on ``--data``, without a RUN."""
    if ns.run is not None:
        raise ConfigError(f"give a RUN folder or --model, not both (got {ns.run} and --model {ns.model})")
    if not entry.evaluates:
        raise ConfigError(f"{entry.prefix}: models have no eval here; use `recogen {task.name} predict --model ...`")
    if ns.data is None:
        raise ConfigError(f"eval --model {ns.model} needs --data FOLDER (a labelled image folder)")
    return {"split": ns.split}


def _task_options(ns: argparse.Namespace, task, entry: ZeroShot) -> dict[str, Any]:
    """The task's own ``predict`` flags the family takes; one it does not take, given with a value other
    than its default, is a mistake (e.g. ``--conf``: OWL has ``--score-threshold``)."""
    out = {}
    for f in task.predict_flags:
        value = getattr(ns, f.dest, None)
        if f.dest in entry.task_flags:
            if f.dest != "save":  # --save is passed as the output folder
                out[f.dest] = value
        elif value != f.kwargs.get("default"):
            raise ConfigError(f"{f.flag} applies to trained runs, not to {entry.prefix}: models "
                              f"(see `recogen {task.name} predict --help`)")
    return out


def _is_run(path: str) -> bool:
    p = Path(path)
    return p.name == "model.json" and p.is_file() or (p / "model.json").is_file()


def evaluate(ns: argparse.Namespace, sel: Selected) -> dict[str, Any]:
    """``recogen TASK eval --model``: the family's ``evaluate`` on ``--data``, written into ``--out``."""
    out = None if ns.no_write else ns.out
    return sel.load().evaluate(ns.data, out=out, **sel.options)
