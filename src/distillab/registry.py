"""One generic name -> factory registry, used for models, data sets, loss terms and methods."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from distillab.core.errors import UserError

T = TypeVar("T")


class RegistryError(UserError, KeyError):
    """An unknown or duplicate name in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def close_matches(name: str, choices: list[str], n: int = 3) -> list[str]:
    """Names among ``choices`` that look like ``name`` (case-insensitive)."""
    lower = {c.lower(): c for c in choices}
    return [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.5)]


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    """The one wording for 'no such name', with close matches or the full list."""
    matches = close_matches(name, choices)
    if matches:
        hint = f"did you mean {', '.join(repr(m) for m in matches)}?"
    else:
        hint = f"known {kind}s: {', '.join(sorted(choices))}"
    return f"unknown {kind} {name!r}: {hint}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    description: str
    meta: dict[str, Any] = field(default_factory=dict)  # what a registry's users know of an entry beyond its factory


class Registry(Generic[T]):
    """Maps names to factories. Use ``@REG.register("name", description=...)`` on a class or function.

    A duplicate name is an error; looking up an unknown name raises :class:`RegistryError` listing
    the closest registered names.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str | None = None, *, description: str = "", **meta: Any) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            key = name or getattr(factory, "__name__")
            if key in self._entries:
                raise RegistryError(f"{self.kind} {key!r} is already registered")
            doc = description or (getattr(factory, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[key] = Entry(key, factory, doc, dict(meta))
            return factory

        return decorator

    def get(self, name: str) -> T:
        return self.entry(name).factory

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(unknown_name_message(self.kind, name, list(self._entries))) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
