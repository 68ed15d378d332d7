"""The FastAPI app: ``create_app(runs)`` loads each run once and serves

- ``POST /v1/<task>`` for every registered task that reads one image (classify, detect, segment...):
  one image (multipart field ``file``, JSON ``{"image": base64}`` or a raw ``image/*`` body) -> the JSON
  of ``recogen TASK predict --json`` for that image;
- ``POST /v1/<task>`` for every task that draws samples (generate): a PNG grid or base64 PNGs;
- ``POST /v1/explain``: a saliency map of a served model's prediction on one image (``recogen explain``);
- ``POST /v1/pipelines/{name}/{capability}`` for every capability of the pipeline table (text2img,
  img2img, inpaint...) on the diffusers pipelines served with ``pipelines=`` (see :mod:`.pipelines`);
- ``POST /v1/zero-shot/{name}/{task}`` for every task of the foundation table (classify, detect,
  segment) on the CLIP / OWL / SAM models served with ``zero_shot=`` (see :mod:`.zero_shot`);
- ``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /`` (the web page), ``/docs``.

Every client mistake is a 4xx ``{"error": message}``; a 500 means a bug (logged with its traceback).
Inference runs in the thread pool, so the event loop stays free: decoding and resizing an upload run
outside the model's lock, and only the forward pass under it.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime, and
# some of them are classes local to create_app.
import base64
import hmac
import logging
import time
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.images import encode_png
from ..errors import UserError
from .bodies import (DEFAULT_BODY_TIMEOUT, GENERATE_BODY_LIMIT, _image_and_params, _image_body_schema, _json_params,
                     _merge_params, _validation_text)
from .errors import ApiError, check_api_key, user_error_status
from .images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, decode_image
from .metrics import Metrics, MetricsMiddleware, route_label
from .models import Served, load_models

log = logging.getLogger("recogen.serve")
PAGE_DIR = Path(__file__).parent / "page"
ERROR_RESPONSES = {s: {"description": d, "content": {"application/json": {"example": {"error": "what went wrong and how to fix it"}}}}
                   for s, d in [(400, "not an image, truncated, empty, malformed body"), (401, "missing or wrong API key"),
                                (404, "unknown model"), (408, "request body not received within --body-timeout"),
                                (413, "upload over --max-upload-mb, image over --max-pixels or --max-side"),
                                (415, "unsupported content type"), (422, "invalid parameters")]}


MAX_QUEUE = 32  # requests that may wait for one model; more are answered 503 (Retry-After)


def create_app(runs: Sequence[Any] = (), *, backend: str = "torch", device: str = "cpu", max_upload_mb: float = 10,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE, max_generate: int = 64,
               api_key: Optional[str] = None, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               models: Optional[dict[str, Served]] = None, pipelines: Any = (), max_pipeline_steps: int = 50,
               max_pipeline_images: int = 4, max_pipeline_size: int = 1024, zero_shot: Any = (),
               max_zero_shot_labels: int = 64) -> FastAPI:
    """Build the service for ``runs`` (run folders or model.json paths), each loaded once now.

    ``backend`` torch or onnx (recognition runs; generators always use torch); ``max_upload_mb`` bounds
    an uploaded image file, ``max_pixels`` its width x height and ``max_side`` its longer side (both
    checked before decoding), ``max_generate`` the images of one generate request, ``body_timeout``
    the seconds a client may take to send a body (then 408); ``api_key``, when set, is required
    (``X-API-Key`` or ``Authorization: Bearer``) on every route but /healthz, the static page and the
    docs; an empty key is an error, not "no key" (pass None for that). ``models`` passes already
    loaded models instead of ``runs`` (and ``pipelines``).

    ``pipelines``: diffusers pipelines to serve, ``["NAME=ID_OR_DIR", ...]`` or ``{name: ID_OR_DIR}``,
    each loaded once now (on ``device``); one request makes at most ``max_pipeline_images`` images of
    ``max_pipeline_steps`` steps and ``max_pipeline_size`` pixels a side.

    ``zero_shot``: foundation models to serve, ``["NAME=PREFIX:ID_OR_DIR", ...]`` or ``{name: "clip:ID"}``
    (``clip:``, ``owl:``, ``sam:``; see :mod:`recogen.foundation`), each loaded once now; one request
    names at most ``max_zero_shot_labels`` labels.

    >>> app = create_app(["runs/classify/digits"], api_key="secret")
    >>> app = create_app(pipelines={"sd15": "models/sd15"}, device="cuda")
    >>> app = create_app(zero_shot={"clip": "clip:openai/clip-vit-base-patch32"})
    >>> import uvicorn; uvicorn.run(app, port=8000)
    """
    from .._version import __version__

    if max_upload_mb <= 0 or max_pixels < 1 or max_side < 1 or max_generate < 1 or not body_timeout > 0:
        from ..errors import ConfigError

        raise ConfigError("--max-upload-mb, --max-pixels, --max-side, --max-generate and --body-timeout must be positive")
    if api_key is not None:
        check_api_key(api_key, "api_key", "pass the key, or api_key=None to serve without authentication")
    from PIL import ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True by other code: truncated JPEG/GIF uploads "
                    "will be accepted, filled with grey (PNGs are still verified); set it back to False")
    from .pipelines import Limits, add_pipeline_routes, load_pipelines
    from .zero_shot import add_zero_shot_routes, load_zero_shot

    if not isinstance(max_zero_shot_labels, int) or max_zero_shot_labels < 2:
        from ..errors import ConfigError

        raise ConfigError(f"--max-zero-shot-labels must be a whole number >= 2, got {max_zero_shot_labels!r}")
    limits = Limits(max_pipeline_steps, max_pipeline_images, max_pipeline_size).check()
    if models is not None:
        served = models
    else:  # runs first (as given), then pipelines, then zero-shot models; names are unique across all
        served = load_models(list(runs), backend=backend, device=device) if runs or not (pipelines or zero_shot) else {}
        served.update(load_pipelines(pipelines, device=device, taken=list(served)))
        served.update(load_zero_shot(zero_shot, device=device, taken=list(served)))
    max_upload = int(max_upload_mb * 2**20)
    metrics = Metrics()
    app = _fastapi(title="recogen", version=__version__,
                   description="Image classification, detection, segmentation and generation with recogen models. "
                               "Errors are JSON: {\"error\": message}.")
    app.state.models, app.state.metrics = served, metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    # ------------------------------------------------------------------------------ auth
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <the server's --api-key>")

    def require_key(x_api_key: Annotated[Optional[str], Security(key_header)],
                    auth: Annotated[Optional[HTTPAuthorizationCredentials], Security(bearer)]) -> None:
        given = x_api_key or (auth.credentials if auth else None)
        if given is None:
            raise ApiError(401, "this server needs an API key: send it as X-API-Key or Authorization: Bearer",
                           "unauthorized")
        if not hmac.compare_digest(given.encode(), api_key.encode()):  # constant time
            raise ApiError(401, "wrong API key", "unauthorized")

    protected = [Depends(require_key)] if api_key else []

    # ------------------------------------------------------------------------- errors
    def _error(request: Request, status: int, message: str, kind: str, headers=None) -> JSONResponse:
        metrics.errors.labels(route_label(request.scope), kind).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {"Retry-After": "5"} if exc.status == 503 else None
        return _error(request, exc.status, exc.message, exc.kind, headers)

    @app.exception_handler(UserError)
    async def on_user_error(request: Request, exc: UserError):
        return _error(request, user_error_status(exc), str(exc), "user_error")

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        return _error(request, 422, "invalid parameters: " + _validation_text(exc.errors()), "invalid_params")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        msg = exc.detail
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        return _error(request, exc.status_code, str(msg), "http", getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception):
        # Only real bugs get here: every client mistake is an ApiError or UserError above.
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal server error ({type(exc).__name__}); it was logged"}, status_code=500)

    # ------------------------------------------------------------------------- helpers
    def pick(task: str, name: Optional[str]) -> Served:
        if name is not None:
            m = served.get(name)
            if m is None:
                raise ApiError(404, f"unknown model {name!r}; served: {', '.join(served) or 'none'} (GET /v1/models)",
                               "unknown_model")
            if m.task != task:
                raise ApiError(404, f"model {name!r} is a {m.task} model; POST it to /v1/{m.task}", "unknown_model")
            return m
        for m in served.values():
            if m.task == task:
                return m
        raise ApiError(404, f"no {task} model is served; start the server with a {task} run (GET /v1/models)",
                       "unknown_model")

    # One prediction at a time per model, other models in parallel. A request waits for its model's turn
    # in the event loop (a limiter of one per model lock), not in a worker thread: requests queued behind a
    # slow model (a diffusion pipeline: seconds to minutes) must not fill the thread pool that every other
    # model, body and image decode needs. The queue per model is bounded (503 with Retry-After beyond it).
    gates: dict[int, Any] = {}
    waiting: dict[int, int] = {}

    async def run_locked(m: Served, fn, request: Optional[Request] = None):
        import anyio

        key = id(m.lock)  # models that share a predictor share its lock, and so its turn
        gate = gates.setdefault(key, anyio.CapacityLimiter(1))
        if waiting.get(key, 0) >= MAX_QUEUE:
            raise ApiError(503, f"model {m.name!r} has {MAX_QUEUE} requests waiting; retry later", "busy")

        def call():
            with m.lock:  # also taken by explain's copy of a model (serve/explain.py)
                t0 = time.perf_counter()
                out = fn()
                metrics.inference.labels(m.name, m.task).observe(time.perf_counter() - t0)
                return out

        waiting[key] = waiting.get(key, 0) + 1
        queued = True
        try:
            async with gate:
                waiting[key] -= 1
                queued = False
                if request is not None and await request.is_disconnected():  # the client left while it waited
                    raise ApiError(499, "the client closed the connection before its turn", "client_gone")
                return await anyio.to_thread.run_sync(call)
        finally:
            if queued:  # cancelled while waiting
                waiting[key] -= 1

    # ---------------------------------------------------------------------- endpoints
    def add_predict_route(spec, cls) -> None:
        task = spec.name

        async def predict(request: Request, query: Annotated[cls, Query()]) -> dict:  # type: ignore[valid-type]
            data, extra = await _image_and_params(request, max_upload, body_timeout)
            params = _merge_params(cls, query, extra)
            m = pick(task, params.model)

            def prepare():  # outside the model's lock: one client's big image does not stall the others
                return spec.serve_prepare(m.predictor, decode_image(data, max_pixels, max_side))

            pred, image = await run_in_threadpool(prepare)
            return await run_locked(m, lambda: spec.serve_response(pred, image, params))

        predict.__name__ = f"{task}_image"
        app.post(f"/v1/{task}", tags=["predict"], dependencies=protected, responses=ERROR_RESPONSES,
                 summary=f"{task} one image", openapi_extra=_image_body_schema(cls),
                 description=f"The JSON of `recogen {task} predict --json` for one image (without \"path\"). "
                             "Parameters go in the query string, the form or the JSON body.")(predict)

    from ..tasks import all_tasks

    for spec in all_tasks().values():  # POST /v1/<task> for every task that reads one image
        cls = spec.params_model()
        if cls is not None and not spec.samples:
            add_predict_route(spec, cls)

    def add_sample_route(spec, cls) -> None:
        task = spec.name

        async def sample(request: Request, query: Annotated[cls, Query()]):  # type: ignore[valid-type]
            extra = await _json_params(request, GENERATE_BODY_LIMIT, body_timeout, '{"n": 4, "seed": 3}')
            p = _merge_params(cls, query, extra)
            if p.n > max_generate:
                raise ApiError(422, f"n={p.n} is over this server's limit of {max_generate} images per request "
                                    "(--max-generate)", "invalid_params")
            m = pick(task, p.model)
            gen = m.predictor

            def draw():
                imgs = gen.sample(p.n, seed=p.seed, class_=p.class_)
                return imgs, gen.grid(imgs)

            imgs, grid = await run_locked(m, draw)
            if p.format == "png":
                return Response(await run_in_threadpool(encode_png, grid), media_type="image/png",
                                headers={"X-Recogen-Model": m.name, "X-Recogen-Seed": str(p.seed)})
            b64 = lambda t: base64.b64encode(encode_png(t)).decode("ascii")  # noqa: E731
            grid_b64, images_b64 = await run_in_threadpool(lambda: (b64(grid), [b64(t) for t in imgs]))
            return {"model": m.name, "n": p.n, "seed": p.seed, "class": p.class_, "grid_png": grid_b64,
                    "images_png": images_b64}

        sample.__name__ = task
        app.post(f"/v1/{task}", tags=[task], dependencies=protected, summary=f"sample a {spec.noun}",
                 responses={**ERROR_RESPONSES, 200: {"content": {"image/png": {}, "application/json": {}},
                                                      "description": "a PNG grid, or JSON with base64 PNGs"}},
                 openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                     "schema": cls.model_json_schema(by_alias=True)}}}})(sample)

    for spec in all_tasks().values():  # tasks that draw images: POST /v1/<task> with n, seed, class, format
        if spec.samples and spec.params_model() is not None:
            add_sample_route(spec, spec.params_model())

    # ------------------------------------------------- POST /v1/pipelines/{name}/{capability}
    describe_pipeline = add_pipeline_routes(app, served, protected=protected, responses=ERROR_RESPONSES, limits=limits,
                                            max_upload=max_upload, max_pixels=max_pixels, max_side=max_side,
                                            body_timeout=body_timeout, run_locked=run_locked)

    # ---------------------------------------------------- POST /v1/zero-shot/{name}/{task}
    describe_zero_shot = add_zero_shot_routes(app, served, protected=protected, responses=ERROR_RESPONSES,
                                              max_labels=max_zero_shot_labels, max_upload=max_upload,
                                              max_pixels=max_pixels, max_side=max_side, body_timeout=body_timeout,
                                              run_locked=run_locked)

    # ------------------------------------------------------------------ POST /v1/explain
    from .explain import ENDPOINT, explain_info, explain_params, explain_response, pick_explainable

    explain_cls = explain_params()

    async def explain_image(request: Request, query: Annotated[explain_cls, Query()]) -> dict:  # type: ignore[valid-type]
        from ..saliency.methods import get_method

        data, extra = await _image_and_params(request, max_upload, body_timeout)
        p = _merge_params(explain_cls, query, extra)
        m = pick_explainable(served, p.model)
        get_method(p.method)  # an unknown method is a 422 before the image is decoded
        image = await run_in_threadpool(decode_image, data, max_pixels, max_side)  # outside the model's locks
        observe = metrics.explain.labels(m.name, p.method).observe
        with metrics.explain_waiting.track_inprogress():
            return await run_in_threadpool(explain_response, m, image, p, device, observe)

    app.post(ENDPOINT, tags=["explain"], dependencies=protected, responses=ERROR_RESPONSES,
             summary="explain a prediction: a saliency map over one image", openapi_extra=_image_body_schema(explain_cls),
             description="Where in the image the model looks for its answer (`recogen explain`): the explanation's "
                         "JSON (method, layer, target, top classes...) with `overlay_png`, the heat map over the image "
                         "as a base64 PNG at the image's own size, and with `return_map=true` the raw `map` in [0, 1] "
                         "at the model's input size. Parameters go in the query string, the form or the JSON body; "
                         "`model` picks the served model (default: the first that can be explained).")(explain_image)

    @app.get("/v1/models", tags=["info"], dependencies=protected, summary="the served models")
    async def list_models() -> dict:
        # A model POST /v1/explain can explain adds ``explain``: {"endpoint", "methods", "default_method"};
        # a pipeline its ``capabilities`` (each with its endpoint and parameters) and ``max_size``; a
        # zero-shot model its ``endpoint``, ``params`` and ``max_labels``.
        return {"models": [{**m.info(), **_some(explain=explain_info(m)), **(describe_pipeline(m) or {}),
                            **(describe_zero_shot(m) or {})} for m in served.values()]}

    @app.get("/healthz", tags=["info"], summary="liveness (never needs the API key)")
    async def healthz() -> dict:
        return {"status": "ok", "models": len(served)}

    @app.get("/metrics", tags=["info"], dependencies=protected, summary="Prometheus metrics")
    async def prometheus() -> Response:
        body, ctype = metrics.exposition()
        return Response(body, media_type=ctype)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html")

    # The page's own files hold no model data: they load without the key (the page then asks for it).
    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")

    # HEAD for every GET route (Starlette's routes answer it, FastAPI's do not), kept out of the schema.
    for route in list(app.routes):
        if isinstance(route, APIRoute) and route.methods == {"GET"}:
            app.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False,
                              dependencies=route.dependencies, response_class=route.response_class,
                              name=f"{route.name}_head")
    return app


def _fastapi(**kwargs: Any) -> FastAPI:
    """The FastAPI app, with /docs (Swagger UI) and /redoc served from the fastapi-offline package's
    copies of their files: FastAPI's own pages load them from a CDN, and are blank offline."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:  # an environment installed before the dependency: a plain page that works offline
        app = FastAPI(docs_url=None, redoc_url=None, **kwargs)

        @app.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            return HTMLResponse("<!doctype html><title>recogen API</title><p>The interactive docs need the "
                                "fastapi-offline package (<code>pip install fastapi-offline</code>). The API's "
                                'OpenAPI schema is at <a href="openapi.json">/openapi.json</a>.')

        return app
    return FastAPIOffline(**kwargs)


def _some(**values: Any) -> dict[str, Any]:
    """The given keyword values that are not None."""
    return {k: v for k, v in values.items() if v is not None}
