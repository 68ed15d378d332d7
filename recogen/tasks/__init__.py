"""The task table: task name -> its registered :class:`~recogen.tasks.spec.Task` spec.

The CLI, ``recogen.train/load``, the service and the web page read every task from here. A new task is
one module defining a ``Task`` subclass plus one line: its module in :data:`BUILTIN` (or a call of
:func:`register_task` from your own code).
"""
from __future__ import annotations

import importlib

from ..errors import UserError
from .spec import Flag, Task

__all__ = ["BUILTIN", "Flag", "Task", "all_tasks", "get_task", "register_task"]

# The built-in tasks' spec modules, imported on first use (each imports fast: no torch).
BUILTIN: tuple[str, ...] = ("recogen.tasks.classify", "recogen.tasks.detect", "recogen.tasks.segment",
                            "recogen.tasks.generate")
TASKS: dict[str, Task] = {}
_loaded = False


def register_task(task: Task | type[Task]) -> Task:
    """Add a task spec (an instance or a ``Task`` subclass) to the table; returns the instance.

    >>> register_task(MyTask)   # then `recogen mytask train ...` and POST /v1/mytask work
    """
    spec = task() if isinstance(task, type) else task
    if not spec.name:
        raise ValueError(f"{type(spec).__name__} has no name")
    if TASKS.get(spec.name) not in (None, spec) and type(TASKS[spec.name]) is not type(spec):
        raise ValueError(f"duplicate task name {spec.name!r}")
    TASKS[spec.name] = spec
    return spec


def all_tasks() -> dict[str, Task]:
    """Every registered task, the built-in ones first."""
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in BUILTIN:
            importlib.import_module(mod)  # each registers its spec
    return TASKS


def get_task(name: str) -> Task:
    """The spec of task ``name``; an unknown name is a UserError listing the known ones."""
    tasks = all_tasks()
    if name not in tasks:
        raise UserError(f"unknown task {name!r}; available: {', '.join(tasks)}")
    return tasks[name]
