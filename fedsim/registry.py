"""A small named registry: one per pluggable family, `make(name_or_class, **kwargs)` style."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that is not registered; the message lists the valid choices."""


def normalize_name(name: str) -> str:
    """Registry keys are case-insensitive and treat '-' and '_' alike."""
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """Maps names to factories (classes or callables) of one family."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str = "") -> Callable[[T], T]:
        """Decorator registering `obj` under `name`."""

        def deco(obj: T) -> T:
            key = normalize_name(name)
            if key in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._entries[key] = obj
            first_line = ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
            self._docs[key] = doc or first_line
            return obj

        return deco

    def add(self, name: str, obj: T, doc: str = "") -> None:
        """Register `obj` without a decorator."""
        self.register(name, doc)(obj)

    def lookup(self, name: str) -> T:
        """The entry for `name`, or an error naming the family and listing the choices."""
        key = normalize_name(name) if isinstance(name, str) else name
        if key not in self._entries:
            raise UnknownNameError(
                f"unknown {self.family} {name!r}; valid choices: {', '.join(self.choices())}"
            )
        return self._entries[key]

    def make(self, name_or_obj: str | T, **kwargs: object) -> object:
        """Instantiate by name (or pass a class/callable through) with `kwargs`."""
        factory = self.lookup(name_or_obj) if isinstance(name_or_obj, str) else name_or_obj
        return factory(**kwargs)  # type: ignore[operator]

    def choices(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        return {k: self._docs.get(k, "") for k in self.choices()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.choices())
