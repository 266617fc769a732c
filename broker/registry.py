"""Registries of adapters, found by the `kind` the configuration names.

In the manner of Vault's backend `Factory` and SPIRE's plugin `Configure`: a factory
parses its own configuration section and builds its adapter. The core only ever looks a
factory up by kind; it never compares kind strings itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["Registry"]


class _Kinded(Protocol):
    @property
    def kind(self) -> str: ...


F = TypeVar("F", bound=_Kinded)


class Registry(Generic[F]):
    """Factories by kind."""

    __slots__ = ("_factories", "_what")

    def __init__(self, what: str) -> None:
        """Create an empty registry of `what` ("issuer", "state store")."""
        self._what = what
        self._factories: dict[str, F] = {}

    def register(self, factory: F) -> F:
        """Add a factory (a kind is registered once).

        Raises:
            ValueError: The kind is taken.
        """
        if factory.kind in self._factories:
            raise ValueError(f"{self._what} kind {factory.kind!r} is already registered")
        self._factories[factory.kind] = factory
        return factory

    def get(self, kind: str) -> F:
        """The factory of `kind`.

        Raises:
            KeyError: No such kind.
        """
        return self._factories[kind]

    def kinds(self) -> tuple[str, ...]:
        """Every registered kind, in registration order."""
        return tuple(self._factories)

    def __iter__(self) -> Iterator[F]:
        """The factories, in registration order."""
        return iter(self._factories.values())
