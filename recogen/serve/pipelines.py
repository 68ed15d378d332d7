"""Diffusers pipelines in the service: ``recogen serve --pipeline NAME=ID_OR_DIR``.

Each pipeline is loaded once at start-up and kept for the server's life. Its endpoints come from the
capability table (:mod:`recogen.pipelines.actions`): every capability registered with ``serve=True``
gets ``POST /v1/pipelines/{name}/{capability}`` here and a form on the web page, with no edit of this
file. The parameters are the CLI's (prompt, negative_prompt, steps, guidance, seed, n, size, and
strength / keep_unmasked where the capability has them), their defaults read from the capability's
Python function, their maxima the server's limits. A capability that reads an image (and a mask)
takes them as the predict endpoints take an image: multipart fields ``file`` (and ``mask``), or base64
``image`` (and ``mask``) in a JSON body, or (image only) a raw ``image/*`` body.

The answer is JSON ``{"model", "capability", "images_png": [base64 PNG...], "record": {...}}``, where
``record`` is what ``--json`` prints for the same call; or, with ``Accept: image/png`` and ``n=1``, the
PNG itself. A request runs the capability's own function (the one behind the CLI and the Python API)
on the held pipeline (:func:`recogen.pipelines.core.held_pipeline`) in the thread pool, under the
model's lock: a diffusers pipeline is not safe to call from two threads at once (its scheduler keeps
the current step), and other models keep answering meanwhile.
"""
# No `from __future__ import annotations`: FastAPI and pydantic read the annotations at runtime.
import base64
import inspect
import io
import re
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional, Sequence

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from ..errors import ConfigError
from .errors import ApiError

TASK = "pipeline"  # the "task" GET /v1/models gives a served pipeline
PREFIX = "/v1/pipelines"
MAX_PROMPT = 2000  # characters; the text encoders truncate to their own token limit anyway
MAX_SEED = 2**53 - 1  # the largest integer a browser's JSON keeps exactly
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Limits:
    """The service's bounds on one request (``--max-pipeline-steps``, ``--max-pipeline-images``,
    ``--max-pipeline-size``): each image is a whole diffusion run, so these bound a request's cost."""

    steps: int = 50
    images: int = 4
    size: int = 1024  # the longer side of a made image, in pixels

    def check(self) -> "Limits":
        """``self``, or a ConfigError naming the option out of range (the capabilities' own bounds)."""
        from ..pipelines.core import MAX_IMAGES

        for flag, value, hi in (("--max-pipeline-steps", self.steps, 1000), ("--max-pipeline-images", self.images,
                                MAX_IMAGES), ("--max-pipeline-size", self.size, 4096)):
            lo = 8 if flag == "--max-pipeline-size" else 1
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{flag} must be a whole number from {lo} to {hi}, got {value!r}")
        return self


@dataclass
class ServedPipeline:
    """One loaded diffusers pipeline. ``capabilities``: the names of the served capabilities it can
    do; ``lock`` serialises its calls (a pipeline is not thread-safe); ``default_size``: the side it
    draws at when no size is asked (None when the pipeline does not say)."""

    name: str
    ref: str
    pipe: Any = field(repr=False)
    facts: dict[str, Any]
    capabilities: list[str]
    default_size: Optional[int] = None
    task: str = TASK
    backend: str = "diffusers"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    made: dict[str, Any] = field(default_factory=dict, repr=False)  # capability -> its pipeline (from_pipe)

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models`` lists (the app adds each capability's endpoint and parameters)."""
        f = self.facts
        return {"name": self.name, "task": self.task, "model": self.ref, "pipeline": f.get("pipeline"),
                "device": f.get("device"), "dtype": f.get("dtype"), "backend": self.backend, "samples": False,
                "default_size": self.default_size}

    def run(self, cap: Any, images: dict[str, Any], params: BaseModel) -> Any:
        """Call ``cap``'s function on the held pipeline (in a worker thread, under :attr:`lock`);
        returns its :class:`~recogen.pipelines.core.PipelineResult`."""
        from ..pipelines.core import held_pipeline

        fn = cap.load()
        args = [self.ref] + [images[k] for k in ("image", "mask") if getattr(cap, k)] + [params.prompt]
        accepted = inspect.signature(fn).parameters
        kw = {k: v for k, v in params.model_dump(exclude={"prompt"}).items() if k in accepted}
        with held_pipeline(self.pipe, self.facts, self.made):
            return fn(*args, **kw)


# ------------------------------------------------------------------------------------------ loading
def parse_specs(specs: Any) -> list[tuple[str, str, bool]]:
    """``(name, ref, named)`` of each ``--pipeline`` value: ``NAME=ID_OR_DIR``, or ``ID_OR_DIR`` alone
    (named after the folder, or the Hub id's last part). A dict ``{name: ref}`` is taken as it is."""
    if isinstance(specs, dict):
        return [(str(k), str(v), True) for k, v in specs.items()]
    out = []
    for spec in specs:
        spec = str(spec)
        name, eq, ref = spec.partition("=")
        if eq and NAME.match(name):
            out.append((name, ref, True))
        else:  # no name given (or what is left of "=" cannot be one: a path holding "=")
            out.append((spec.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], spec, False))
    for name, ref, _ in out:
        if not ref.strip():
            raise ConfigError(f"--pipeline {name}= names no model; pass NAME=ID_OR_DIR (a Hub id or a pipeline folder)")
        if not NAME.match(name):
            raise ConfigError(f"--pipeline {ref}: {name!r} cannot name a model (letters, digits, '_', '.', '-'); "
                              "pass NAME=ID_OR_DIR")
    return out


def servable() -> list[Any]:
    """The capabilities registered with ``serve=True``, in the table's order."""
    from ..pipelines.actions import CAPABILITIES

    return [c for c in CAPABILITIES.values() if c.serve]


def load_pipelines(specs: Any, device: str = "cpu", dtype: str = "auto",
                   taken: Sequence[str] = ()) -> dict[str, ServedPipeline]:
    """Load each ``--pipeline`` (see :func:`parse_specs`) once; name -> :class:`ServedPipeline`.

    A name given twice, or one a served run has (``taken``), is an error when it was given explicitly,
    else it gets ``-pipeline`` (``-pipeline-2``...) added, as run names do.
    """
    from ..pipelines import core
    from .models import free_name

    caps = servable()
    kinds = [c.name for c in caps if c.name in core.AUTO_CLASSES]
    names = set(taken)
    out: dict[str, ServedPipeline] = {}
    for name, ref, named in parse_specs(specs):
        if name in names and named:
            raise ConfigError(f"two served models are called {name!r}; give the pipeline another name "
                              "(--pipeline NAME=ID_OR_DIR)")
        name = free_name(name, "pipeline", names)
        pipe, facts = core.load_pipeline(kinds[0] if kinds else "text2img", ref, device=device, dtype=dtype)
        unet = getattr(pipe, "unet", None)
        # A dedicated inpainting checkpoint's UNet reads 4 latent + 1 mask + 4 masked-image channels:
        # it can only inpaint (a text-to-image call would fail inside the network).
        inpaint_only = getattr(getattr(unet, "config", None), "in_channels", 4) == 9
        names.add(name)
        out[name] = ServedPipeline(name, ref, pipe, facts, [c.name for c in caps if c.mask or not inpaint_only],
                                   _default_size(pipe))
    return out


def _default_size(pipe: Any) -> Optional[int]:
    """The side a pipeline draws at by default: its denoiser's sample size times the autoencoder's scale."""
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(getattr(net, "config", None), "sample_size", None)
    scale = getattr(pipe, "vae_scale_factor", None)
    return sample * scale if isinstance(sample, int) and isinstance(scale, int) else None


# --------------------------------------------------------------------------------------- parameters
def _size_text(v: Any) -> Any:
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # 512 as well as "512"


def capability_params(cap: Any, limits: Limits) -> type[BaseModel]:
    """The request parameters of capability ``cap`` (pydantic): the CLI's options of that capability,
    with the defaults of its Python function and the server's ``limits`` as maxima.

    ``prompt`` is not required by the model, because it may come in the query string or in the body;
    the endpoint asks for it when it is in neither.
    """
    d = {k: p.default for k, p in inspect.signature(cap.load()).parameters.items()}
    fields: dict[str, Any] = {
        "prompt": (Optional[str], Field(None, min_length=1, max_length=MAX_PROMPT, title="Prompt",
                                        description="what to draw (required)")),
        "negative_prompt": (Optional[str], Field(d.get("negative_prompt"), max_length=MAX_PROMPT,
                                                 title="Negative prompt", description="what to steer away from")),
        "steps": (int, Field(min(d.get("steps", 30), limits.steps), ge=1, le=limits.steps, title="Steps",
                             description=f"denoising steps (at most {limits.steps} here: --max-pipeline-steps)")),
        "guidance": (float, Field(d.get("guidance", 7.5), ge=0, le=50, allow_inf_nan=False, title="Guidance",
                                  description="classifier-free guidance scale (0 or 1 = off)")),
        "seed": (int, Field(d.get("seed", 0), ge=0, le=MAX_SEED, title="Seed",
                            description="random seed; image k uses seed + k: the same seed gives the same images")),
        "n": (int, Field(min(d.get("n", 1), limits.images), ge=1, le=limits.images, title="Images",
                         description=f"number of images (at most {limits.images} here: --max-pipeline-images)")),
        "size": (Annotated[Optional[str], BeforeValidator(_size_text)], Field(
            None, pattern=r"^[0-9]{1,5}(x[0-9]{1,5})?$", title="Size",
            description=f"N or WxH, multiples of 8, at most {limits.size} a side (--max-pipeline-size); default: "
                        + ("the input image's size" if cap.image else "the model's own"))),
    }
    if cap.strength is not None:
        fields["strength"] = (float, Field(d.get("strength", cap.strength), gt=0, le=1, allow_inf_nan=False,
                                           title="Strength", description="how much of the input is noised away, (0, 1]"))
    if cap.mask:
        fields["keep_unmasked"] = (bool, Field(d.get("keep_unmasked", True), title="Keep unmasked",
                                               description="paste the input's pixels back outside the mask"))
    return create_model(f"{cap.name.title().replace('-', '').replace('_', '')}Params",
                        __config__=ConfigDict(extra="forbid"), __doc__=f"``{PREFIX}/{{name}}/{cap.name}`` parameters.",
                        **fields)


def _body_schema(cap: Any, cls: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body of a capability's endpoint (the body is read by hand, to bound its size)."""
    fields = cls.model_json_schema()["properties"]
    # In a body the prompt is a text (it may come in the query string instead, so the model allows None).
    fields["prompt"] = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT, "description": "what to draw"}
    if not cap.image:
        return {"requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "required": ["prompt"], "properties": fields, "additionalProperties": False}}}}}
    files = [("file", "image", "the input image (PNG, JPEG, BMP, GIF, TIFF, WebP)")]
    if cap.mask:
        files.append(("mask", "mask", "the mask, the image's size: white = repaint, black = keep"))
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {"type": "object", "required": [f for f, _, _ in files] + ["prompt"],
                                           "properties": {**{f: {"type": "string", "format": "binary", "description": d}
                                                             for f, _, d in files}, **fields},
                                           "additionalProperties": False}},
        "application/json": {"schema": {"type": "object", "required": [k for _, k, _ in files] + ["prompt"],
                                        "properties": {**{k: {"type": "string", "format": "byte",
                                                              "description": f"{d}, base64 (a data: URL is accepted)"}
                                                          for _, k, d in files}, **fields},
                                        "additionalProperties": False}}}
    if not cap.mask:  # the prompt then goes in the query string
        content["image/*"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


# ---------------------------------------------------------------------------------------- endpoints
def _wants_png(request: Any) -> bool:
    """The client asked for ``image/png`` and not for JSON (a browser's ``*/*`` gets JSON)."""
    types = [t.split(";")[0].strip().lower() for t in request.headers.get("accept", "").split(",")]
    return "image/png" in types and "application/json" not in types


def _pick(served: dict[str, Any], name: str, cap: Any) -> ServedPipeline:
    """The served pipeline ``name``; 404 when there is none, 422 when it cannot do ``cap``."""
    m = served.get(name)
    if not isinstance(m, ServedPipeline):
        have = [k for k, v in served.items() if isinstance(v, ServedPipeline)]
        what = f"a {m.task} model, not a pipeline" if m is not None else "not served"
        raise ApiError(404, f"model {name!r} is {what}; served pipelines: {', '.join(have) or 'none'} "
                            "(start the server with --pipeline NAME=ID_OR_DIR; GET /v1/models)", "unknown_model")
    if cap.name not in m.capabilities:
        raise ApiError(422, f"pipeline {name!r} cannot do {cap.name} (an inpainting checkpoint only inpaints); "
                            f"it does {', '.join(m.capabilities)}", "unsupported_task")
    return m


def _check_size(m: ServedPipeline, cap: Any, p: BaseModel, image: Any, limits: Limits) -> None:
    """422 unless the images to make are within ``limits.size`` a side (before anything runs)."""
    from ..pipelines.core import check_size

    try:
        size = check_size(p.size)
    except ConfigError as e:
        raise ApiError(422, "invalid parameters: size: " + str(e).removeprefix("--size "), "invalid_params") from None
    if size is None and image is not None:
        size = (image.width // 8 * 8, image.height // 8 * 8)  # what the capability works at (fit_size)
    if size is None:
        if m.default_size is None:
            raise ApiError(422, f"pipeline {m.name!r} does not say its default size: pass size (N or WxH)",
                           "invalid_params")
        size = (m.default_size, m.default_size)
    if max(size) > limits.size:
        from_image = p.size is None and image is not None
        raise ApiError(422, f"the images would be {size[0]}x{size[1]}, over this server's limit of {limits.size} px a "
                            f"side (--max-pipeline-size); pass a smaller size"
                            + (" (the default is the input image's size)" if from_image else ""), "invalid_params")


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def add_pipeline_routes(app: Any, served: dict[str, Any], *, protected: list, responses: dict, limits: Limits,
                        max_upload: int, max_pixels: int, max_side: int, body_timeout: float,
                        run_locked: Callable) -> Callable[[Any], Optional[dict[str, Any]]]:
    """Add ``POST /v1/pipelines/{name}/{capability}`` for every servable capability to ``app``.

    ``run_locked(model, fn)`` runs ``fn`` in the thread pool under the model's lock (and times it).
    Returns ``describe(model)``: what ``GET /v1/models`` adds for a served pipeline (its
    ``capabilities``, each with ``endpoint``, ``help``, ``image``, ``mask`` and ``params``, and
    ``max_size``), None for other models.
    """
    from fastapi import Path, Query, Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    from .bodies import GENERATE_BODY_LIMIT, IMAGE, MASK, _images_and_params, _json_params, _merge_params
    from .images import decode_image
    from .models import param_list

    classes = {cap.name: capability_params(cap, limits) for cap in servable()}

    def add(cap: Any, cls: type[BaseModel]) -> None:
        files = [IMAGE, MASK] if cap.mask else [IMAGE]

        async def endpoint(request: Request,
                           name: Annotated[str, Path(max_length=200, description="the served pipeline (GET /v1/models)")],
                           query: Annotated[cls, Query()]):  # type: ignore[valid-type]
            m = _pick(served, name, cap)
            if cap.image:
                raw, extra = await _images_and_params(request, max_upload, body_timeout, files)
            else:
                raw, extra = {}, await _json_params(request, GENERATE_BODY_LIMIT, body_timeout,
                                                    '{"prompt": "a red fox", "seed": 3}')
            p = _merge_params(cls, query, extra)
            if p.prompt is None or not p.prompt.strip():
                raise ApiError(422, f"prompt is required: what {cap.name} should draw (in the JSON body, the form or "
                                    "the query string)", "invalid_params")
            png = _wants_png(request)
            if png and p.n != 1:
                raise ApiError(406, f"image/png answers hold one image, and n={p.n}; ask for application/json "
                                    "(base64 PNGs) or n=1", "not_acceptable")
            # decoded and checked outside the model's lock: a large upload does not stall other requests
            images = await run_in_threadpool(lambda: {k: decode_image(v, max_pixels, max_side) for k, v in raw.items()})
            _check_size(m, cap, p, images.get("image"), limits)
            res = await run_locked(m, lambda: m.run(cap, images, p), request)
            pngs = await run_in_threadpool(lambda: [_png(im) for im in res.images])
            if png:
                return Response(pngs[0], media_type="image/png", headers={
                    "X-Recogen-Model": m.name, "X-Recogen-Seed": str(p.seed),
                    "X-Recogen-Seconds": str(res.record.get("seconds"))})
            return {"model": m.name, "capability": cap.name,
                    "images_png": [base64.b64encode(b).decode("ascii") for b in pngs], "record": res.record}

        endpoint.__name__ = f"pipeline_{cap.name.replace('-', '_')}"
        reads = (" and a mask" if cap.mask else "") if cap.image else ""
        app.post(f"{PREFIX}/{{name}}/{cap.name}", tags=["pipelines"], dependencies=protected,
                 summary=f"{cap.name} with a served diffusers pipeline",
                 description=f"{cap.help[:1].upper()}{cap.help[1:]}: the CLI's `{cap.name}` as a request"
                             + (f" (an image{reads} as the predict endpoints take one)" if cap.image else "")
                             + ". Parameters go in the query string or the body. Answers JSON with `images_png` "
                               "(base64 PNGs) and `record` (what `--json` prints for the same call), or with "
                               "`Accept: image/png` and `n=1` the PNG itself.",
                 responses={**responses, 406: {"description": "Accept: image/png with n > 1"},
                            200: {"description": "the images and the call's record",
                                  "content": {"application/json": {}, "image/png": {}}}},
                 openapi_extra=_body_schema(cap, cls))(endpoint)

    for cap in servable():  # one route per capability: the table, not a branch per capability
        add(cap, classes[cap.name])

    def describe(m: Any) -> Optional[dict[str, Any]]:
        if not isinstance(m, ServedPipeline):
            return None
        caps = [c for c in servable() if c.name in m.capabilities]
        return {"max_size": limits.size, "capabilities": [
            {"name": c.name, "endpoint": f"{PREFIX}/{m.name}/{c.name}", "help": c.help, "image": c.image,
             "mask": c.mask, "params": [{**q, "required": True} if q["name"] == "prompt" else q
                                        for q in param_list(classes[c.name], skip=())]} for c in caps]}

    return describe
