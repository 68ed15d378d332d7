"""The registry of model builders by name (``MODELS``) and its decorator, :func:`register_model`.

A module of its own so that builder modules can register themselves without importing the package
``recogen.models`` (whose ``create_model`` reaches into ``sources``, which builds torchvision's
detectors and segmenters through their builder modules: importing the package from them closed a
circle). ``recogen.models`` re-exports both names.
"""
from __future__ import annotations

from ..errors import ModelError
from ..registry import Registry

MODELS: Registry = Registry("model", error=ModelError)
register_model = MODELS.register
