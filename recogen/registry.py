"""Name -> factory registries shared by datasets, models and metrics (as in timm's model registry)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Entry(Generic[F]):
    name: str
    fn: F
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[F]):
    """A named collection of factories.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny", task="classify")
    ... def tiny(**kw): ...
    >>> MODELS.get("tiny").fn is tiny
    True
    """

    def __init__(self, kind: str, error: type[UserError] = UserError):
        self.kind = kind
        self.error = error
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``; a duplicate name is a programming error."""

        def deco(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"duplicate {self.kind} name {name!r}")
            self._entries[name] = Entry(name, fn, dict(meta))
            return fn

        return deco

    def get(self, name: str) -> Entry[F]:
        """Return the entry for ``name`` or raise a UserError that suggests close names."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise self.error(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}."
            ) from None

    def names(self, **where: Any) -> list[str]:
        """Sorted names, optionally filtered by metadata equality (``names(task="classify")``)."""
        return sorted(
            n for n, e in self._entries.items() if all(e.meta.get(k) == v for k, v in where.items())
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[F]]:
        return iter(self._entries[n] for n in sorted(self._entries))
