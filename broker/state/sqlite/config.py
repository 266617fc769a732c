"""`state:` keys of the SQLite store (`backend: sqlite`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.config.reader import Reader

__all__ = ["SqliteSettings", "parse_sqlite"]

DEFAULT_PATH = "state.db"


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """One SQLite file (one host; WAL mode)."""

    path: Path


def parse_sqlite(reader: Reader) -> SqliteSettings:
    """Read the SQLite store's keys of the `state:` section."""
    return SqliteSettings(path=reader.path("path", DEFAULT_PATH))
