"""The public surface stays put: every CLI command's options and the signatures of the public Python API
(``recogen.*``, each task's train/evaluate/load/predict_files/sample, the predictors' methods) equal the
snapshot in tests/data/api_surface.json, taken before the task-spec redesign (issue 11).

A deliberate change of the surface updates the snapshot in the same commit:
    python tests/test_api_surface.py > tests/data/api_surface.json
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
from pathlib import Path

SNAPSHOT = Path(__file__).parent / "data" / "api_surface.json"
PREDICTORS = {"classify": ["Classifier"], "detect": ["Detector"], "segment": ["Segmenter"], "generate": ["Generator"]}


def _params(fn) -> list[str]:
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind == p.VAR_KEYWORD:
            out.append("**" + p.name)
        elif p.kind == p.VAR_POSITIONAL:
            out.append("*" + p.name)
        else:
            out.append(p.name + ("" if p.default is inspect.Parameter.empty else "=" + repr(p.default)))
    return out


def _commands(parser: argparse.ArgumentParser, path: list[str]) -> dict[str, list[str]]:
    out, subs, opts = {}, None, []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            subs = a
        else:
            opts.append("/".join(sorted(a.option_strings)) if a.option_strings else a.dest)
    out[" ".join(path) or "recogen"] = sorted(opts)
    for name, sub in (subs.choices.items() if subs else ()):
        out.update(_commands(sub, path + [name]))
    return out


def surface() -> dict:
    import recogen
    from recogen.cli import build_parser

    api = {n: _params(getattr(recogen, n)) for n in recogen.__all__ if callable(getattr(recogen, n))}
    for task, classes in PREDICTORS.items():
        mod = importlib.import_module(f"recogen.tasks.{task}")
        for fn in ("train", "evaluate", "load", "sample", "predict_files"):
            if fn in dir(mod) or hasattr(mod, fn):
                api[f"tasks.{task}.{fn}"] = _params(getattr(mod, fn))
        for name in classes:
            cls = getattr(mod, name)
            for meth in ("predict", "evaluate", "sample"):
                if hasattr(cls, meth):
                    api[f"{name}.{meth}"] = _params(getattr(cls, meth))
    return {"api": api, "cli": _commands(build_parser(), [])}


def test_cli_options_are_unchanged():
    want = json.loads(SNAPSHOT.read_text())["cli"]
    got = surface()["cli"]
    assert sorted(got) == sorted(want), "commands added or removed"
    for cmd in want:
        assert got[cmd] == want[cmd], f"options of `{cmd}` changed"


def test_public_python_api_is_unchanged():
    want = json.loads(SNAPSHOT.read_text())["api"]
    got = surface()["api"]
    for name in want:
        assert name in got, f"public name {name} disappeared"
        assert got[name] == want[name], f"signature of {name} changed"


if __name__ == "__main__":
    print(json.dumps(surface(), indent=1, sort_keys=True))
