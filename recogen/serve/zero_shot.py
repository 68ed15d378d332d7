"""Foundation models in the service: ``recogen serve --zero-shot NAME=PREFIX:ID_OR_DIR``.

Each model (a CLIP, OWL-ViT/OWLv2 or SAM of :mod:`recogen.foundation`) is loaded once at start-up and
kept for the server's life. Its endpoint comes from the foundation table
(:data:`recogen.foundation.registry.ZERO_SHOT`): a family serving task T gets
``POST /v1/zero-shot/{name}/T`` (``clip:`` -> classify, ``owl:`` -> detect, ``sam:`` -> segment) and a form
on the web page, with no edit of this file for a new family. The parameters are the family's own CLI
flags (``--labels``, ``--prompt-template``, ``--score-threshold``, ``--points``, ``--boxes``) plus the
task's ``predict`` parameters it takes (``topk``, ``iou``, ``max_det``), as the CLI reads them. Labels,
points and boxes are the CLI's text (``"cat,dog"``, ``"x,y;x,y"``) or, in a JSON body, lists.

The image comes as the predict endpoints take it (multipart ``file``, base64 ``image`` in JSON, or a raw
``image/*`` body). The answer is what ``--json`` prints for the image (without ``"path"``), computed by
the family's own predictor (the one behind the CLI and ``recogen.zero_shot_*``) in the thread pool under
the model's lock; arrays in it come as base64 PNGs (SAM's ``mask`` as ``mask_png``, class index per
pixel, and ``overlay`` as ``overlay_png``). With ``Accept: image/png`` a segmentation answers its mask PNG.
"""
# No `from __future__ import annotations`: FastAPI and pydantic read the annotations at runtime.
import base64
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional, Sequence

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from ..errors import ConfigError
from .errors import ApiError

TASK = "zero-shot"  # the "task" GET /v1/models gives a served foundation model
PREFIX = "/v1/zero-shot"
MAX_TEXT = 4000  # characters of one text parameter (labels, points...): far more than 64 labels need
MAX_PROMPTS = 64  # points or boxes in one request: SAM's prompt encoder gains nothing from more
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The family flags that hold a list (text "a,b" / "x,y;x,y", or a JSON list), and how many items are allowed.
LISTS = {"labels": "labels", "points": "points", "boxes": "boxes"}


@dataclass
class ServedZeroShot:
    """One loaded foundation model. ``entry`` is its family in the foundation table; ``lock``
    serialises its calls (a transformers model and processor are not made to be shared by threads)."""

    name: str
    ref: str
    entry: Any = field(repr=False)
    predictor: Any = field(repr=False)
    task: str = TASK
    backend: str = "transformers"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def capability(self) -> str:
        """The recognition task the family does (classify, detect, segment): the endpoint's last part."""
        return self.entry.task

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models`` lists (the app adds ``endpoint`` and ``params``)."""
        card = self.predictor.card
        return {"name": self.name, "task": self.task, "model": card.get("model", self.ref),
                "family": self.entry.prefix, "capability": self.capability, "help": self.entry.help,
                "model_type": card.get("model_type"), "device": card.get("device"), "backend": self.backend,
                "samples": False}


# ------------------------------------------------------------------------------------------ loading
def parse_specs(specs: Any) -> list[tuple[str, str, bool]]:
    """``(name, PREFIX:ID_OR_DIR, named)`` of each ``--zero-shot`` value: ``NAME=PREFIX:ID_OR_DIR``, or the
    model alone (named after the folder or the Hub id's last part). A dict ``{name: ref}`` is taken as it is."""
    if isinstance(specs, dict):
        out = [(str(k), str(v), True) for k, v in specs.items()]
    else:
        out = []
        for spec in map(str, specs):
            name, eq, ref = spec.partition("=")
            if eq and NAME.match(name):
                out.append((name, ref, True))
            else:  # no name (or what is left of "=" cannot be one: a path holding "=")
                last = spec.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
                out.append((last.rsplit(":", 1)[-1], spec, False))
    for name, ref, _ in out:
        if not ref.strip():
            raise ConfigError(f"--zero-shot {name}= names no model; pass NAME=PREFIX:ID_OR_DIR, e.g. "
                              "clip=clip:openai/clip-vit-base-patch32")
        if not NAME.match(name):
            raise ConfigError(f"--zero-shot {ref}: {name!r} cannot name a model (letters, digits, '_', '.', '-'); "
                              "pass NAME=PREFIX:ID_OR_DIR")
    return out


def check_specs(specs: Any) -> None:
    """Each ``--zero-shot`` value's name, family and files, checked without importing torch: a mistyped
    folder, or a Hub id neither cached nor reachable, fails in one line before anything loads."""
    from ..foundation.hf import resolve
    from ..foundation.registry import parse_model

    for _, ref, _ in parse_specs(specs):
        entry, location = parse_model(ref)
        resolve(location, entry.prefix)


def load_zero_shot(specs: Any, device: str = "cpu", taken: Sequence[str] = ()) -> dict[str, ServedZeroShot]:
    """Load each ``--zero-shot`` model once (see :func:`parse_specs`); name -> :class:`ServedZeroShot`.

    A name given twice, or one another served model has (``taken``), is an error when it was given
    explicitly, else it gets ``-zero-shot`` (``-zero-shot-2``...) added, as run names do.
    """
    from ..foundation.registry import parse_model
    from .models import free_name

    names = set(taken)
    out: dict[str, ServedZeroShot] = {}
    for name, ref, named in parse_specs(specs):
        if name in names and named:
            raise ConfigError(f"two served models are called {name!r}; give the model another name "
                              "(--zero-shot NAME=PREFIX:ID_OR_DIR)")
        name = free_name(name, "zero-shot", names)
        entry, location = parse_model(ref)
        predictor = entry.load(location, device=device)
        # The foundation loader hands the same object for the same model: one model, one lock.
        same = [m for m in out.values() if m.predictor is predictor]
        names.add(name)
        out[name] = ServedZeroShot(name, ref, entry, predictor)
        if same:
            out[name].lock = same[0].lock
    return out


# --------------------------------------------------------------------------------------- parameters
def _list_text(v: Any) -> Any:
    """A JSON list (from a JSON body) kept as JSON text: the field is text, read by :func:`_value`."""
    return json.dumps(v) if isinstance(v, (list, tuple)) else v


def _value(text: Any) -> Any:
    """A list parameter's value for the family's parser: JSON list text -> the list, else the CLI's text."""
    if isinstance(text, str) and text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            raise ApiError(422, f"invalid parameters: {text[:80]!r} starts like a JSON list but is not one",
                           "invalid_params") from None
    return text


def _flag_field(flag: Any, required: bool) -> tuple[Any, Any]:
    """The pydantic field of one family flag: its help (without the ``--model PREFIX:`` lead-in), a
    number for ``type=float``, else text (what the CLI's parser reads)."""
    help_ = re.sub(r"^--model [a-z0-9_]+: ", "", flag.kwargs.get("help", ""))
    title = flag.dest.replace("_", " ").capitalize()
    from ..foundation.options import unit_interval

    if flag.kwargs.get("type") is unit_interval:  # a score threshold: the CLI's range, checked by pydantic
        return Optional[float], Field(None, ge=0, le=1, allow_inf_nan=False, title=title, description=help_)
    if flag.kwargs.get("type") is float:
        return Optional[float], Field(None, allow_inf_nan=False, title=title, description=help_)
    kind = Annotated[Optional[str], BeforeValidator(_list_text)]
    extra = {"examples": ["cat,dog,car"]} if flag.dest == "labels" else {}
    return kind, Field(None, min_length=1 if required else 0, max_length=MAX_TEXT, title=title,
                       description=help_ + (" (required)" if required else ""), **extra)


def family_params(entry: Any) -> type[BaseModel]:
    """The request parameters of family ``entry``: its own flags, then the task's ``predict``
    parameters it takes (their fields as ``POST /v1/<task>`` has them: bounds, defaults, help).

    A required flag is not required by the model itself, because it may come in the query string or in
    the body; the endpoint asks for it when it is in neither (:func:`missing`)."""
    from ..tasks import get_task

    required = {g[0] for g in entry.needs if len(g) == 1}
    fields: dict[str, Any] = {f.dest: _flag_field(f, f.flag in required) for f in entry.flags}
    task_cls = get_task(entry.task).params_model()
    for dest in entry.task_flags:
        f = (task_cls.model_fields if task_cls is not None else {}).get(dest)
        if f is not None:
            fields[dest] = (f.annotation, f)
    return create_model(f"{entry.prefix.title()}ZeroShotParams", __config__=ConfigDict(extra="forbid"),
                        __doc__=f"``{PREFIX}/{{name}}/{entry.task}`` parameters ({entry.prefix}: models).", **fields)


def missing(entry: Any, p: BaseModel) -> Optional[str]:
    """The message for a needed parameter left out (``labels``; ``points`` or ``boxes``), else None."""
    dests = {f.flag: f.dest for f in entry.flags}
    for group in entry.needs:
        names = [dests.get(flag, flag.lstrip("-").replace("-", "_")) for flag in group]
        if all(getattr(p, n, None) in (None, "") for n in names):
            return (f"{' or '.join(names)} {'is' if len(names) == 1 else 'are'} required for a {entry.prefix}: model "
                    "(in the query string, the form or the JSON body)")
    return None


def options(p: BaseModel, max_labels: int) -> dict[str, Any]:
    """The predictor's keyword arguments of request parameters ``p``: list parameters parsed as the CLI
    parses them (a 422 naming the mistake), and within this server's limits."""
    from ..foundation.options import parse_boxes, parse_labels, parse_points

    parsers = {"labels": parse_labels, "points": parse_points, "boxes": parse_boxes}
    out: dict[str, Any] = {}
    for k, v in p.model_dump().items():
        if v is None or v == "":
            continue
        if k in parsers:
            v = _value(v)
            items = parsers[k](v)  # a ConfigError is the service's 422
            most = max_labels if k == "labels" else MAX_PROMPTS
            if len(items) > most:
                raise ApiError(422, f"{len(items)} {k} is over this server's limit of {most}"
                                    + (" (--max-zero-shot-labels)" if k == "labels" else ""), "invalid_params")
        out[k] = v
    return out


def body_schema(cls: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body of a family's endpoint: the image as the predict endpoints take it, the list
    parameters as text or (JSON) lists."""
    fields = cls.model_json_schema()["properties"]
    as_json = {k: ({"anyOf": [{"type": "string", "maxLength": MAX_TEXT},
                              {"type": "array", "maxItems": MAX_PROMPTS, "items": {}}],
                    "description": v.get("description", "")} if k in LISTS else v) for k, v in fields.items()}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "the image (PNG, JPEG, BMP, GIF, TIFF, WebP)"},
            **fields}}},
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "byte", "description": "the image file, base64 (a data: URL is accepted)"},
            **as_json}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}}}


def jsonable(result: dict[str, Any]) -> dict[str, Any]:
    """A predictor's result as JSON: arrays become base64 PNGs (``mask`` -> ``mask_png``, class index per
    pixel in a palette PNG as ``POST /v1/segment`` gives it; others, e.g. ``overlay``, -> ``NAME_png``)."""
    import numpy as np

    from ..data.images import encode_png
    from ..tasks.segment.predict import mask_image

    out = {}
    for k, v in result.items():
        if isinstance(v, np.ndarray):
            png = encode_png(mask_image(v) if k == "mask" else v)
            out[f"{k}_png"] = base64.b64encode(png).decode("ascii")
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------- endpoints
def _pick(served: dict[str, Any], name: str, task: str) -> ServedZeroShot:
    """The served foundation model ``name``; 404 when there is none, 422 when it does another task."""
    m = served.get(name)
    if not isinstance(m, ServedZeroShot):
        have = [k for k, v in served.items() if isinstance(v, ServedZeroShot)]
        what = f"a {m.task} model, not a zero-shot one" if m is not None else "not served"
        raise ApiError(404, f"model {name!r} is {what}; served zero-shot models: {', '.join(have) or 'none'} "
                            "(start the server with --zero-shot NAME=PREFIX:ID_OR_DIR; GET /v1/models)", "unknown_model")
    if m.capability != task:
        raise ApiError(422, f"model {name!r} ({m.entry.prefix}:) does {m.capability}, not {task}: POST to "
                            f"{PREFIX}/{name}/{m.capability}", "unsupported_task")
    return m


def add_zero_shot_routes(app: Any, served: dict[str, Any], *, protected: list, responses: dict, max_labels: int,
                         max_upload: int, max_pixels: int, max_side: int, body_timeout: float,
                         run_locked: Callable) -> Callable[[Any], Optional[dict[str, Any]]]:
    """Add ``POST /v1/zero-shot/{name}/{task}`` to ``app`` for every task a foundation family does.

    ``run_locked(model, fn)`` runs ``fn`` in the thread pool under the model's lock (and times it).
    Returns ``describe(model)``: what ``GET /v1/models`` adds for a served foundation model (``endpoint``
    and ``params``, as a run's entry has them, and ``max_labels``), None for other models.
    """
    from fastapi import Path, Query, Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    from ..foundation.registry import ZERO_SHOT
    from .bodies import _image_and_params, _merge_params
    from .images import decode_image
    from .models import param_list
    from .pipelines import _wants_png

    classes = {z.prefix: family_params(z) for z in ZERO_SHOT.values()}

    def add(task: str) -> None:
        fams = [z for z in ZERO_SHOT.values() if z.task == task]
        # One route per task; each family's parameters are checked against its own model (below), the
        # schema documents the union, so that every family's parameters are accepted by the route.
        merged: dict[str, Any] = {}
        for z in fams:
            for k, f in classes[z.prefix].model_fields.items():
                merged.setdefault(k, (f.annotation, f))
        cls = create_model(f"ZeroShot{task.title()}Params", __config__=ConfigDict(extra="forbid"), **merged)

        async def endpoint(request: Request,
                           name: Annotated[str, Path(max_length=200, description="the served model (GET /v1/models)")],
                           query: Annotated[cls, Query()]):  # type: ignore[valid-type]
            m = _pick(served, name, task)
            data, extra = await _image_and_params(request, max_upload, body_timeout)
            own = classes[m.entry.prefix]
            given = {**query.model_dump(exclude_unset=True), **extra}
            foreign = sorted(set(given) - set(own.model_fields))
            if foreign:
                raise ApiError(422, f"invalid parameters: {', '.join(foreign)}: not a parameter of {m.entry.prefix}: "
                                    f"models (they take {', '.join(own.model_fields)})", "invalid_params")
            p = _merge_params(own, own(), given)
            need = missing(m.entry, p)
            if need:
                raise ApiError(422, need, "invalid_params")
            kw = options(p, max_labels)
            png = _wants_png(request)
            if png and task != "segment":  # before any work: only a segmentation has a picture for an answer
                raise ApiError(406, f"{task} answers are JSON; image/png is the answer of a segmentation "
                                    "(its mask)", "not_acceptable")
            image = await run_in_threadpool(decode_image, data, max_pixels, max_side)  # outside the model's lock
            result = await run_locked(m, lambda: m.predictor.predict(image, **kw), request)
            if png:
                from ..data.images import encode_png
                from ..tasks.segment.predict import mask_image

                body = await run_in_threadpool(lambda: encode_png(mask_image(result["mask"])))
                return Response(body, media_type="image/png", headers={"X-Recogen-Model": m.name})
            return await run_in_threadpool(jsonable, result)

        endpoint.__name__ = f"zero_shot_{task}"
        which = ", ".join(f"{z.prefix}: ({z.help})" for z in fams)
        app.post(f"{PREFIX}/{{name}}/{task}", tags=["zero-shot"], dependencies=protected,
                 summary=f"{task} one image with a served foundation model",
                 description=f"`recogen {task} predict --model PREFIX:ID_OR_DIR --json` for one image, with a model "
                             f"served by `--zero-shot NAME=PREFIX:ID_OR_DIR`: {which}. The image as the predict "
                             "endpoints take it; parameters in the query string, the form or the JSON body (lists "
                             "as the CLI's text, or JSON lists). Arrays of the answer come as base64 PNGs (`mask_png`, "
                             "`overlay_png`); with `Accept: image/png` a segmentation answers its mask PNG.",
                 responses={**responses, 406: {"description": "Accept: image/png for an answer that is not a mask"},
                            200: {"description": "the prediction", "content": {"application/json": {},
                                                                               "image/png": {}}}},
                 openapi_extra=body_schema(cls))(endpoint)

    for task in dict.fromkeys(z.task for z in ZERO_SHOT.values()):  # the table, not a branch per family
        add(task)

    def describe(m: Any) -> Optional[dict[str, Any]]:
        if not isinstance(m, ServedZeroShot):
            return None
        cls = classes[m.entry.prefix]
        params, props = param_list(cls, skip=()), cls.model_json_schema()["properties"]
        required = {g[0].lstrip("-").replace("-", "_") for g in m.entry.needs if len(g) == 1}
        for q in params:
            if q["name"] in required:
                q["required"] = True
            if "examples" in props.get(q["name"], {}):  # the page shows one as the text box's placeholder
                q["examples"] = props[q["name"]]["examples"]
        return {"endpoint": f"{PREFIX}/{m.name}/{m.capability}", "params": params, "max_labels": max_labels}

    return describe
