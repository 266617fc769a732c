"""Shared, self-expiring state: embedded SQLite for one process, Redis for replicas.

To add a store: a sibling package with a `config.py` (its keys of the `state:` section),
the store (implementing `broker.typing.StateStore`, every backend error raised as
`Unavailable`), and a `FACTORY` registered below; then add it to the contract suite in
`tests/contracts/test_state_store.py`. The factory's module imports only the store's
configuration: the store and its client library are imported in `build`, so that a broker
configured for another store never loads them (`tests/integration/test_cli_imports.py`).
"""

from __future__ import annotations

from typing import Protocol

from broker.config.reader import Reader
from broker.registry import Registry
from broker.state import redis, sqlite
from broker.state.base import CredentialRecord, LimitResult
from broker.typing import Clock, StateStore

__all__ = ["STATE_STORES", "CredentialRecord", "LimitResult", "StateStoreFactory"]


class StateStoreFactory(Protocol):
    """Parses a store's keys of the `state:` section and builds the store."""

    @property
    def kind(self) -> str:
        """The `state.backend` value that selects this store."""
        ...

    def parse(self, reader: Reader) -> object:
        """Read this store's keys (the common keys are read by the caller).

        Raises:
            ConfigError: Naming the file and the key.
        """
        ...

    def build(self, settings: object, clock: Clock) -> StateStore:
        """Build the store from what `parse` returned (nothing is opened yet)."""
        ...


STATE_STORES: Registry[StateStoreFactory] = Registry("state store")
STATE_STORES.register(sqlite.FACTORY)
STATE_STORES.register(redis.FACTORY)
