"""The REST service and web page: ``recogen serve [RUN...] [--pipeline NAME=ID_OR_DIR...] [--zero-shot
NAME=PREFIX:ID_OR_DIR...]``.

>>> from recogen.serve import create_app
>>> app = create_app(["runs/classify/digits"])      # a FastAPI app; run it with uvicorn
>>> app = create_app(pipelines={"sd15": "models/sd15"})   # a diffusers pipeline: POST /v1/pipelines/sd15/text2img
>>> app = create_app(zero_shot={"clip": "clip:openai/clip-vit-base-patch32"})   # POST /v1/zero-shot/clip/classify

Importing this package is instant: FastAPI, torch and the models are imported by :func:`create_app`.
"""
from __future__ import annotations

from typing import Any


def create_app(runs: Any = (), **options: Any):
    """Build the FastAPI app serving ``runs`` (run folders or model.json paths), ``pipelines=`` and
    ``zero_shot=``; see
    :func:`recogen.serve.app.create_app`."""
    from .app import create_app as _create

    return _create(runs, **options)


__all__ = ["create_app"]
