"""Shared, self-expiring state: embedded SQLite for one process, Redis for replicas."""

from __future__ import annotations

from broker.config.settings import Settings
from broker.state.base import CredentialRecord, LimitResult
from broker.state.redis import RedisStateStore
from broker.state.sqlite import SqliteStateStore
from broker.typing import Clock, StateStore

__all__ = ["CredentialRecord", "LimitResult", "create_state_store"]


def create_state_store(settings: Settings, clock: Clock) -> StateStore:
    """Build the store the configuration names."""
    state = settings.state
    if state.backend == "redis":
        assert state.url is not None  # guaranteed by the settings loader
        return RedisStateStore(
            state.url, clock, prefix=state.key_prefix, password_file=state.password_file
        )
    assert state.path is not None
    return SqliteStateStore(state.path, clock)
