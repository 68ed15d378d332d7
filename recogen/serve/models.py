"""The served models: each run loaded once, named and locked.

How a task answers a request comes from its spec (``recogen.tasks``): ``params_model`` (the endpoint's
parameters), ``serve_prepare`` (run outside the model's lock, so one client's large image is converted
and resized while other clients' forward passes run) and ``serve_response`` (under the lock: the JSON of
``recogen TASK predict --json`` for one image, without "path").
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RunError


@dataclass
class Served:
    """One loaded run. ``lock`` serialises its predictions: a predictor is not safe to share between
    threads (the detector sets its thresholds on the model for the length of a call). ``explainable``
    is ``(torch predictor, explainable copy of its network)`` once ``POST /v1/explain`` has used the
    model, and ``explain_lock`` serialises explanations (grad-cam hooks that copy's layers during a
    call); see :mod:`recogen.serve.explain`."""

    name: str
    task: str
    predictor: Any
    backend: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    explain_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    explainable: Any = field(default=None, repr=False)

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models`` lists for this model; the web page builds itself from it.

        Every entry says ``samples`` (the task draws images: ``POST /v1/<task>`` with n, seed...). A task that reads one
        image adds ``endpoint`` (``/v1/<task>``) and ``params``: its request parameters from the spec's
        ``params_model()`` but ``model``, in order, each ``{"name", "type", "required", "default",
        "description"}`` plus what applies of ``title`` (only when the field sets one), ``minimum``,
        ``maximum``, ``exclusive_minimum``, ``exclusive_maximum``, ``nullable`` and ``enum``. ``type`` is the
        JSON schema type: integer, number, boolean, string, ... ("any" when the schema has none). The
        app adds ``explain`` for a model ``POST /v1/explain`` can explain (serve/explain.py: explain_info).
        """
        from ..tasks import get_task
        card, spec = self.predictor.card, get_task(self.task)
        out: dict[str, Any] = {
            "name": self.name, "task": self.task, "model": card.get("model"), "classes": list(card["classes"]),
            "image_size": card.get("image_size"), "channels": card.get("in_chans"), "backend": self.backend,
            "samples": bool(spec.samples)}
        cls = spec.params_model()
        if cls is not None and not spec.samples:
            out.update(endpoint=f"/v1/{self.task}", params=param_list(cls))
        return {**out, **spec.model_info(card)}


def param_list(cls: Any, skip: tuple[str, ...] = ("model",)) -> list[dict[str, Any]]:
    """The request parameters of the pydantic model ``cls`` (by alias, in order, but ``skip``) as
    ``GET /v1/models`` lists them for the web page: each ``{"name", "type", "required", "default",
    "description"}`` plus what applies of ``title``, ``minimum``, ``maximum``, ``exclusive_minimum``,
    ``exclusive_maximum``, ``nullable`` and ``enum`` (see :meth:`Served.info`)."""
    schema = cls.model_json_schema()  # by alias: the names a request uses
    names = {(f.alias or k): f for k, f in cls.model_fields.items()}
    params = []
    for name, prop in schema.get("properties", {}).items():
        if name in skip:  # the page picks the model itself
            continue
        field = names.get(name)
        # Optional[X] is anyOf [X, null]: X describes the value.
        alts = [a for a in prop.get("anyOf", [prop]) if a.get("type") != "null"]
        nullable = len(alts) < len(prop.get("anyOf", [prop]))
        body = {**prop, **alts[0]} if len(alts) == 1 else prop
        p: dict[str, Any] = {"name": name, "type": body.get("type", "any"),
                             "required": name in schema.get("required", ()), "default": prop.get("default"),
                             "description": prop.get("description", "")}
        if field is not None and field.title:
            p["title"] = field.title
        for key, as_ in (("minimum", "minimum"), ("maximum", "maximum"), ("exclusiveMinimum", "exclusive_minimum"),
                         ("exclusiveMaximum", "exclusive_maximum"), ("enum", "enum")):
            if key in body:
                p[as_] = body[key]
        if "const" in body and "enum" not in p:
            p["enum"] = [body["const"]]
        if nullable:
            p["nullable"] = True
        params.append(p)
    return params


def free_name(base: str, kind: str, taken: set[str]) -> str:
    """``base`` if no served model has it; else ``base-kind``, then ``base-kind-2``... (runs, pipelines and
    zero-shot models are named this way)."""
    name, k = base, 2
    if name in taken:
        name = f"{base}-{kind}"
    while name in taken:
        name, k = f"{base}-{kind}-{k}", k + 1
    return name


def _unique_name(path: Path, task: str, taken: set[str]) -> str:
    """The run folder's name; on a clash ``name-task``, then ``name-task-2``..."""
    return free_name(path.name if path.is_dir() else path.parent.name, task, taken)


def load_models(runs: list[str | Path], backend: str = "torch", device: str = "cpu") -> dict[str, Served]:
    """Load every run once; returns name -> :class:`Served` in the order given.

    Generators have no export, so they always run with torch (their ``backend`` says so).
    """
    from ..artifact import read_card
    from ..tasks import all_tasks

    if not runs:
        raise RunError("give at least one run folder to serve (e.g. recogen serve runs/classify/digits), a diffusers "
                       "pipeline (--pipeline NAME=ID_OR_DIR) or a foundation model (--zero-shot NAME=PREFIX:ID_OR_DIR)")
    served: dict[str, Served] = {}
    for run in runs:
        card = read_card(run)  # read once, passed down
        name = card["task"]
        task = all_tasks().get(name)
        if task is None or not (task.params_model() or task.samples):
            raise RunError(f"{run} holds a {name} model, which the service cannot serve yet")
        b = "torch" if task.samples else backend  # generators have no export
        pred = task.load(run, device=device, backend=b, card=card)
        served_name = _unique_name(Path(run).expanduser(), name, set(served))
        served[served_name] = Served(served_name, name, pred, b)
    return served
