"""Each state store implementation, opened fresh for a test (Redis: a key prefix of its own)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from broker.state.redis.store import RedisStateStore
from broker.state.sqlite import SqliteStateStore
from broker.typing import Clock, StateStore
from tests.support.servers import RedisServer

STORE_KINDS = ["sqlite", "redis"]


@asynccontextmanager
async def open_store(
    kind: str, directory: Path, clock: Clock, redis: RedisServer
) -> AsyncIterator[StateStore]:
    """A started store of `kind` (SQLite in `directory`, or on `redis`), closed afterwards."""
    store: StateStore
    if kind == "sqlite":
        store = SqliteStateStore(directory / "state.db", clock)
    else:
        store = RedisStateStore(redis.url, clock, prefix=f"t{secrets.token_hex(4)}:")
    await store.start()
    try:
        yield store
    finally:
        await store.close()
