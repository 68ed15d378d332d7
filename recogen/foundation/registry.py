"""The table of foundation models: one :class:`ZeroShot` per model family, keyed by its prefix.

``recogen TASK predict --model PREFIX:ID_OR_DIR`` (and ``eval`` where the family can evaluate) reads
this table, generically: which task the family serves, the extra flags it takes, which of the task's
own ``predict`` flags apply to it, and the class that loads it. A new family is one module with its
predictor class plus one :func:`register` line at the bottom. Importing this module imports nothing
heavy (``recogen --help`` builds the flags from it).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError
from ..tasks.spec import Flag
from .hf import Source, resolve
from .options import (PROMPT_TEMPLATE, argtype, check_template, parse_boxes, parse_labels, parse_points,
                      unit_interval)


@dataclass(frozen=True)
class ZeroShot:
    """One family of foundation models.

    ``prefix``: how ``--model`` names it (``clip:ID_OR_DIR``); ``task``: the task whose ``predict`` it
    joins; ``loader``: ``"module:Class"`` of its predictor (a class with ``load(source, device)``,
    ``predict(images, **options)`` and ``predict_files(files, out_dir, **options)``); ``model_types``:
    the ``config.json`` ``model_type`` values that make a bare folder this family; ``flags``: its own
    options (default None, so that giving one without ``--model`` is caught); ``task_flags``: the
    ``dest`` of each of the task's ``predict`` flags it also takes; ``needs``: groups of its flags of which
    ``predict`` needs one each (checked before the model loads); ``evaluates``: whether
    ``recogen TASK eval --model`` works with it; ``example``: a Hub id for help texts."""

    prefix: str
    task: str
    help: str
    loader: str
    model_types: tuple[str, ...]
    flags: tuple[Flag, ...] = ()
    task_flags: tuple[str, ...] = ()
    needs: tuple[tuple[str, ...], ...] = ()
    evaluates: bool = False
    example: str = ""

    def predictor_class(self) -> type:
        """The family's predictor class (imports its module: torch and transformers come with it)."""
        mod, _, attr = self.loader.partition(":")
        return getattr(importlib.import_module(mod), attr)

    def load(self, location: Any, device: str = "auto"):
        """The family's predictor of ``location`` (a Hub id, a folder, or an already resolved
        :class:`~.hf.Source`). Where the files are is settled first, so a model that cannot be had
        offline fails before torch or transformers is imported."""
        source = location if isinstance(location, Source) else resolve(str(location), self.prefix)
        return self.predictor_class().load(source, device=device)


ZERO_SHOT: dict[str, ZeroShot] = {}


def register(entry: ZeroShot) -> ZeroShot:
    """Add a family to the table; a prefix registered twice is an error."""
    if entry.prefix in ZERO_SHOT:
        raise ValueError(f"foundation model prefix {entry.prefix!r} is registered twice")
    ZERO_SHOT[entry.prefix] = entry
    return entry


def for_task(task: str) -> list[ZeroShot]:
    """The families that serve ``task``, in registration order."""
    return [z for z in ZERO_SHOT.values() if z.task == task]


def model_help(task: str) -> str | None:
    """``--model``'s help for ``task``'s actions, or None when no family serves it."""
    fams = for_task(task)
    if not fams:
        return None
    names = ", ".join(f"{z.prefix}:ID_OR_DIR ({z.help})" for z in fams)
    return (f"a foundation model instead of RUN: {names}; a Hub id (e.g. {fams[0].example}) or a local folder "
            "(save_pretrained / `hf download ID --local-dir DIR`)")


def parse_model(ref: str, task: str | None = None) -> tuple[ZeroShot, str]:
    """``"clip:openai/clip-vit-base-patch32"`` -> (the clip family, the Hub id or folder). A bare folder
    is recognised by its ``config.json`` ``model_type``. With ``task``, a family of another task is refused
    with the command that runs it."""
    prefix, sep, rest = str(ref).partition(":")
    if sep and prefix in ZERO_SHOT:
        if not rest:
            raise ModelError(f"--model {ref} names no model; e.g. {prefix}:{ZERO_SHOT[prefix].example}")
        entry, location = ZERO_SHOT[prefix], rest
    else:
        entry, location = _by_folder(str(ref)), str(ref)
    if task is not None and entry.task != task:
        raise ConfigError(f"{entry.prefix}: models are for {entry.task}, not {task}; run "
                          f"`recogen {entry.task} predict --model {entry.prefix}:{location} ...`")
    return entry, location


def _by_folder(ref: str) -> ZeroShot:
    known = ", ".join(f"{z.prefix}:" for z in ZERO_SHOT.values())
    config = Path(ref).expanduser() / "config.json"
    if not config.is_file():
        raise ModelError(f"--model {ref}: name the model family with a prefix ({known} e.g. "
                         f"clip:{ZERO_SHOT['clip'].example}), or pass a local model folder with config.json")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelError(f"cannot read {config}: {e}") from None
    for z in ZERO_SHOT.values():
        if model_type in z.model_types:
            return z
    families = "; ".join(f"{z.prefix}: " + ", ".join(z.model_types) for z in ZERO_SHOT.values())
    raise ModelError(f"{ref} holds a {model_type!r} model, which no foundation family here runs ({families})")


# ------------------------------------------------------------------------------------- the families
_LABELS_HELP = "comma-separated labels to choose from, e.g. \"cat,dog,car\""
_TEMPLATE_HELP = f"text each label is put in; {{}} marks the label (default \"{PROMPT_TEMPLATE}\")"

register(ZeroShot(
    "clip", "classify", "zero-shot classification with CLIP, SigLIP and kin",
    "recogen.foundation.clip:ZeroShotClassifier",
    model_types=("clip", "siglip", "siglip2", "chinese_clip", "altclip", "align", "metaclip_2"),
    flags=(Flag("--labels", {"type": argtype(parse_labels, least=2), "metavar": "A,B,...",
                             "help": f"--model clip: {_LABELS_HELP} (eval: default the data's class names)"}),
           Flag("--prompt-template", {"type": argtype(check_template), "metavar": "TEXT",
                                      "help": f"--model clip: {_TEMPLATE_HELP}"})),
    task_flags=("topk",), needs=(("--labels",),), evaluates=True, example="openai/clip-vit-base-patch32"))
register(ZeroShot(
    "owl", "detect", "open-vocabulary detection with OWL-ViT and OWLv2",
    "recogen.foundation.owl:ZeroShotDetector",
    model_types=("owlvit", "owlv2"),
    flags=(Flag("--labels", {"type": argtype(parse_labels), "metavar": "A,B,...",
                             "help": f"--model owl: {_LABELS_HELP}"}),
           Flag("--prompt-template", {"type": argtype(check_template), "metavar": "TEXT",
                                      "help": f"--model owl: {_TEMPLATE_HELP}"}),
           Flag("--score-threshold", {"type": unit_interval, "metavar": "S",
                                      "help": "--model owl: minimum score of a box (default 0.1)"})),
    task_flags=("iou", "max_det", "save"), needs=(("--labels",),), example="google/owlv2-base-patch16-ensemble"))
register(ZeroShot(
    "sam", "segment", "promptable segmentation with Segment Anything (SAM)",
    "recogen.foundation.sam:PromptSegmenter",
    model_types=("sam",),
    flags=(Flag("--points", {"type": argtype(parse_points), "metavar": "X,Y;X,Y",
                             "help": "--model sam: points on the object in pixels; X,Y,0 marks a point "
                                     "that is not on it"}),
           Flag("--boxes", {"type": argtype(parse_boxes), "metavar": "X0,Y0,X1,Y1;...",
                            "help": "--model sam: one box per object, in pixels"})),
    task_flags=("save",), needs=(("--points", "--boxes"),), example="facebook/sam-vit-base"))

