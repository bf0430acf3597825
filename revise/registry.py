"""One registry type for everything looked up by name (methods, architectures, loaders)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from revise.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """'did you mean a, b?' for the names close to ``name``, or None when none is close."""
    close = difflib.get_close_matches(name, list(known), n=3)
    return f"did you mean {', '.join(close)}?" if close else None


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
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}",
                hint=did_you_mean(name, self._items),
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
