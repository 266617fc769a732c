"""The embedded state store (`backend: sqlite`): one SQLite file, one host."""

from __future__ import annotations

from broker.config.reader import Reader
from broker.state.sqlite.config import SqliteSettings, parse_sqlite
from broker.state.sqlite.store import SqliteStateStore
from broker.typing import Clock, StateStore

__all__ = ["FACTORY", "SqliteStateStore"]


class _Factory:
    kind = "sqlite"

    def parse(self, reader: Reader) -> SqliteSettings:
        return parse_sqlite(reader)

    def build(self, settings: object, clock: Clock) -> StateStore:
        assert isinstance(settings, SqliteSettings)
        return SqliteStateStore(settings.path, clock)


FACTORY = _Factory()
