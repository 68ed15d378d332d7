"""The task table: task name -> the module that trains, evaluates and predicts for it (Ultralytics-style)."""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UserError

# Each module provides train(config, **options), evaluate(run, ...), load(path, device) -> predictor.
TASKS: dict[str, str] = {
    "classify": "recogen.tasks.classify",
    "detect": "recogen.tasks.detect",
    "segment": "recogen.tasks.segment",
    "generate": "recogen.tasks.generate",
}


def get_task(name: str) -> ModuleType:
    """Import and return the module implementing task ``name``."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
