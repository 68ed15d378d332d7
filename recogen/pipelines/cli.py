"""The CLI actions of the pipeline capabilities (:mod:`.actions`): argparse only here, the work is
imported when a command runs, so ``recogen --help`` stays instant.

``recogen generate text2img --model ID_OR_DIR --prompt ...`` and ``recogen edit img2img MODEL IMAGE
--prompt ...`` are new actions. ``recogen edit inpaint`` exists already for recogen runs: it gains the
pipeline options, and the model decides which one runs (a folder with ``model_index.json``, or a
``--prompt`` with a reference that is not a local path: a diffusers pipeline; otherwise a run).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from .actions import Capability, in_group
from .device import DTYPES


def _size(text: str) -> str:
    """argparse type of ``--size``: N or WxH, multiples of 8 (checked by the capability's own check)."""
    from .core import check_size

    try:
        check_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--size ")) from None
    return text


# (flag, argparse keyword arguments): every option of a pipeline action; defaults None, so only options
# given reach the capability's function and its own defaults apply otherwise.
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--prompt", dict(metavar="TEXT", help="what to draw")),
    ("--negative-prompt", dict(metavar="TEXT", help="what to steer away from")),
    ("--steps", dict(type=int, help="denoising steps (default 30)")),
    ("--guidance", dict(type=float, help="classifier-free guidance scale (default 7.5; 0 or 1 = off)")),
    ("--seed", dict(type=int, help="random seed; image k uses seed + k (default 0)")),
    ("--n", dict(type=int, help="number of images (default 1)")),
    ("--size", dict(type=_size, metavar="N|WxH", help="image size, multiples of 8 (default: the model's own, "
                                                       "or the input image's)")),
    ("--out", dict(metavar="PATH", help="NAME.png (NAME_0.png... for --n > 1) or a folder; the record of the "
                                        "call goes beside it as NAME.json (folder: params.json)")),
    ("--device", dict(help="auto (default: a GPU if there is one), cpu, cuda, cuda:N or mps")),
    ("--dtype", dict(choices=["auto", "fp32", "fp16", "bf16"], help="weights' precision (default auto: fp16 on a "
                                                                     "GPU, fp32 on the CPU)")),
    ("--attention-slicing", dict(action="store_true", default=None, help="compute attention in slices: less memory, "
                                                                         "a little slower")),
    ("--cpu-offload", dict(action="store_true", default=None, help="keep weights in CPU memory and move each part to "
                                                                   "the GPU as it runs (needs accelerate)")),
    ("--json", dict(action="store_true", default=None, help="print the record of the call as JSON")),
]
STRENGTH = ("--strength", dict(type=float, help="how much of the input is noised away, (0, 1] (default {default:g})"))
MASK = ("--mask", dict(metavar="MASK", help="mask image of the input's size: white = repaint, black = keep"))
KEEP = ("--keep-unmasked", dict(action=argparse.BooleanOptionalAction, default=None,
                                help="paste the input's pixels back outside the mask (default on)"))
LORA = [("--lora", dict(metavar="RUN", help="load LoRA adapters onto the model: a `recogen generate finetune` run "
                                          "folder (or any folder with pytorch_lora_weights.safetensors, or a "
                                          ".safetensors file)")),
        ("--lora-scale", dict(type=float, help="strength of the --lora adapters (default 1; 0 = the base model)"))]
CALL_DESTS = ["negative_prompt", "steps", "guidance", "seed", "n", "size", "out", "device", "dtype",
              "attention_slicing", "cpu_offload", "strength", "keep_unmasked", "lora", "lora_scale"]


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _options(cap: Capability) -> list[tuple[str, dict[str, Any]]]:
    opts = list(OPTIONS)
    if cap.strength is not None:
        flag, kw = STRENGTH
        opts.append((flag, {**kw, "help": kw["help"].format(default=cap.strength)}))
    if cap.mask:
        opts += [MASK, KEEP]
    if cap.lora:
        opts += LORA
    return opts


def add_actions(actions, group: str, parser_class, existing: dict[str, argparse.ArgumentParser] | None = None,
                run_only: list[tuple[str, str]] = ()) -> None:
    """Add the actions of ``group``'s capabilities to the subparsers ``actions``. A capability whose
    action exists already (``existing``: name -> parser) adds its options to that parser instead, and
    runs when the model is a pipeline; ``run_only``: (flag, dest) of that action's recogen-run options."""
    for cap in in_group(group):
        if cap.cli:  # an action with options of its own (training): its module builds it
            import importlib

            mod, _, attr = cap.cli.partition(":")
            getattr(importlib.import_module(mod), attr)(actions, cap)
            continue
        if existing and cap.name in existing:
            _extend(existing[cap.name], cap, run_only)
            continue
        p = actions.add_parser(cap.name, help=cap.help)
        if group == "generate":
            p.add_argument("--model", required=True, metavar="ID_OR_DIR",
                           help="Hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or a pipeline folder")
        else:
            p.add_argument("model", metavar="MODEL", help="Hub id or diffusers pipeline folder")
        if cap.image:
            p.add_argument("image", help="input image")
        for flag, kw in _options(cap):
            kw = {**kw, "required": True} if flag in ("--prompt", "--out") or (flag == "--mask") else kw
            p.add_argument(flag, **kw)
        p.set_defaults(func=lambda ns, cap=cap: run_capability(cap, ns))


def _extend(p: argparse.ArgumentParser, cap: Capability, run_only: list[tuple[str, str]]) -> None:
    """Give an existing action the capability's options (those it lacks) and route pipelines to it."""
    have = set(p._option_string_actions)  # argparse keeps no public list of a parser's flags
    added = []
    for flag, kw in _options(cap):
        if flag not in have:  # marked as pipeline options in the help of an action that also takes runs
            p.add_argument(flag, **{**kw, "help": f"pipelines: {kw['help']}"})
            added.append((flag, _dest(flag)))
    original: Callable = p.get_default("func")

    def func(ns: argparse.Namespace) -> int:
        if is_pipeline(ns.run, ns.prompt):
            given = [flag for flag, dest in run_only if getattr(ns, dest, None) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} apply to recogen runs, not to the diffusers pipeline {ns.run}")
            if ns.out is None:
                raise ConfigError("--out NAME.png (or a folder) is needed with a diffusers pipeline")
            return run_capability(cap, ns)
        given = [flag for flag, dest in added if getattr(ns, dest, None) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to diffusers pipelines (a Hub id, or a folder with "
                              f"model_index.json), and {ns.run} is a local path without model_index.json, so it "
                              "is read as a recogen run")
        return original(ns)

    p.set_defaults(func=func)


def is_pipeline(ref: str, prompt: str | None) -> bool:
    """A diffusers pipeline folder, or (with a prompt) a reference that is not a local path: a Hub id."""
    path = Path(ref).expanduser()
    if path.exists():
        from .hub import INDEX

        return path.is_dir() and (path / INDEX).is_file()
    return prompt is not None


def run_capability(cap: Capability, ns: argparse.Namespace) -> int:
    """Run one capability with the options given, then print its record (``--json``) or a summary."""
    if ns.prompt is None:
        raise ConfigError(f"--prompt is needed: {cap.name} draws what the prompt says")
    model = getattr(ns, "model", None) or ns.run
    args = [model] + ([ns.image] if cap.image else []) + ([ns.mask] if cap.mask else []) + [ns.prompt]
    kw = {d: getattr(ns, d) for d in CALL_DESTS if getattr(ns, d, None) is not None}
    res = cap.load()(*args, **kw)
    r = res.record
    if ns.json:
        print(json.dumps(r, indent=2))
        return 0
    dtype = {v: k for k, v in DTYPES.items()}.get(r["dtype"], r["dtype"])
    print(f"{cap.name} with {r['model']} ({r['pipeline']}, {r['device']} {dtype}): "
          f"{r['n']} image(s) {r['width']}x{r['height']}, {r['steps']} steps, seed {r['seed']}"
          f"{cap.summary(r)}, {r['seconds']:.1f} s")
    for p in res.paths:
        print(f"wrote {p}")
    print(f"record: {res.record_path}")
    return 0
