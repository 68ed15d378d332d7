"""``POST /v1/explain``: where in an image a served model looks for its answer, through
:func:`recogen.saliency.api.explain` (the function behind ``recogen explain``).

Which tasks can be explained comes from the saliency package's registry of task explainers
(``recogen.saliency.targets``): a task registered there is explained here with no change to this file,
and its :meth:`Explanation.to_json` fields pass through as they are.

Each served model keeps one explainable copy of its network (``explainable_copy``: eval mode, no
in-place activations), made on its first explain request, instead of a deep copy per request; its own
lock (``Served.explain_lock``) lets one explanation at a time use it, since grad-cam hooks the
explained layer for the length of a call and two calls would mix their activations. Predictions do not
wait for explanations: they use the served network under the model's other lock.
"""
# No `from __future__ import annotations`: FastAPI and pydantic read the annotations at runtime.
import base64
import time
from typing import Annotated, Any, Optional, Union

from pydantic import ConfigDict, Field

from ..tasks.params import Params
from .errors import ApiError
from .models import Served

ENDPOINT = "/v1/explain"
DEFAULT_METHOD = "gradcam"


def explain_params() -> type[Params]:
    """The endpoint's parameters (pydantic), built when the app is made so that the method names the
    docs and the page offer are those registered then."""
    from ..saliency.methods import METHODS

    names = list(METHODS)

    class ExplainParams(Params):
        """``POST /v1/explain`` parameters."""

        model_config = ConfigDict(populate_by_name=True)
        method: str = Field(DEFAULT_METHOD, max_length=100, title="Method", json_schema_extra={"enum": names},
                            description=f"explanation method: {', '.join(names)} (default {DEFAULT_METHOD})")
        class_: Optional[Union[int, Annotated[str, Field(max_length=200)]]] = Field(
            None, alias="class", title="Class", description="what to explain: a class name or index (default: the top class)")
        layer: Optional[str] = Field(None, max_length=200, title="Layer",
                                     description="module name in the network (CAM methods; default: the architecture's, "
                                                 "e.g. the last conv stage)")
        return_map: bool = Field(False, title="Raw map",
                                 description="also return map: the float map in [0, 1] at the model's input size, "
                                             "as rows of numbers")

    return ExplainParams


def explainable(m: Served) -> bool:
    """Whether ``explain`` supports the task of served model ``m``."""
    from ..saliency.targets import EXPLAINERS

    return m.task in EXPLAINERS


def explain_info(m: Served) -> Optional[dict[str, Any]]:
    """What ``GET /v1/models`` says of explaining ``m`` (None when its task cannot be explained)."""
    if not explainable(m):
        return None
    from ..saliency.methods import METHODS

    return {"endpoint": ENDPOINT, "methods": list(METHODS), "default_method": DEFAULT_METHOD}


def pick_explainable(served: dict[str, Served], name: Optional[str]) -> Served:
    """The served model called ``name`` (default: the first whose task explain supports); 404 for an
    unknown name or when none can be explained, 422 for a model of a task explain does not support."""
    from ..saliency.targets import EXPLAINERS

    kinds = " and ".join(e.kind for e in EXPLAINERS.values()) or "no"
    if name is not None:
        m = served.get(name)
        if m is None:
            raise ApiError(404, f"unknown model {name!r}; served: {', '.join(served) or 'none'} (GET /v1/models)",
                           "unknown_model")
        if not explainable(m):
            raise ApiError(422, f"model {name!r} is a {m.task} model; explain supports {kinds} models so far",
                           "unsupported_task")
        return m
    for m in served.values():
        if explainable(m):
            return m
    raise ApiError(404, f"no model that explain supports ({kinds}) is served; start the server with such a run "
                        "(GET /v1/models)", "unknown_model")


def _network(m: Served, device: str) -> tuple[Any, Any]:
    """``(a torch predictor of m, its explainable copy)``, made on the first call (under
    ``m.explain_lock``). A model served with ONNX Runtime has no network to hook: its run's PyTorch
    weights are loaded for explaining."""
    from ..saliency.api import explainable_copy

    if m.explainable is None:
        pred = m.predictor
        if m.backend != "torch":  # (the ONNX backend's network is an nn.Module too: a wrapper of its session)
            path = getattr(pred, "path", None)
            if path is None:
                raise ApiError(422, f"model {m.name!r} is served with the {m.backend} backend and was not loaded from "
                                    "a run folder: explain needs its PyTorch weights", "unsupported_backend")
            from ..tasks import get_task

            pred = get_task(m.task).load(path, device=device, backend="torch")
            net = explainable_copy(pred.model)
        else:
            with m.lock:  # copied while no prediction runs on it (the detector sets thresholds on it for a call)
                net = explainable_copy(pred.model)
        m.explainable = (pred, net)
    return m.explainable


def explain_response(m: Served, image: Any, p: Any, device: str = "cpu", observe=None) -> dict[str, Any]:
    """The answer to one request: the explanation's ``to_json()`` fields, ``overlay_png`` (base64 PNG at
    the image's own size) and, with ``return_map``, ``map`` (rows of floats in [0, 1] at the model's
    input size). A task that explains several targets in one image (detection: one per box) gives the
    first (best) at the top level and the others, each the same fields, in ``others``.
    ``observe(seconds)`` is told the model time (lock wait excluded). Runs in a worker thread.
    """
    from ..saliency.api import explain

    with m.explain_lock:  # one explanation at a time per network copy: grad-cam hooks its layer
        pred, net = _network(m, device)
        t0 = time.perf_counter()
        try:
            found = explain(pred, [image], method=p.method, target=p.class_, layer=p.layer, explainable=net)
        finally:
            net.zero_grad(set_to_none=True)  # the parameters' gradients are not kept between requests
        if observe is not None:
            observe(time.perf_counter() - t0)
    first, *rest = [_fields(ex, p.return_map) for ex in found]
    return {**first, "others": rest} if rest else first


def _fields(ex: Any, with_map: bool) -> dict[str, Any]:
    from ..data.images import encode_png

    out = {**ex.to_json(), "overlay_png": base64.b64encode(encode_png(ex.overlay)).decode("ascii")}
    if with_map:
        out["map"] = ex.map.astype("float32").tolist()
    return out
