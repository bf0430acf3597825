"""One registry type for everything looked up by name (methods, architectures, loaders)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from revise.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, with decorator registration, listing and did-you-mean errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._summaries: dict[str, str] = {}

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, summary)
            return obj

        return decorator

    def add(self, name: str, obj: T, summary: str = "") -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        doc = summary or (getattr(obj, "__doc__", None) or "").strip()
        self._summaries[name] = doc.splitlines()[0] if doc else ""

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else None
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}",
                hint=hint,
            ) from None

    def summary(self, name: str) -> str:
        self.get(name)
        return self._summaries[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
