"""Faults injected into real backends (not fakes): the backend itself refuses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def refuse_credential_writes(state: Any) -> Iterator[None]:
    """Make a running SQLite state store fail every write of a credential record.

    A trigger makes SQLite itself raise (`sqlite3.IntegrityError`), the way a full disk or
    a read-only file would, but only for credential records: limits are still consumed, so
    the failure lands after the credential was minted.
    """
    db = state._db
    for op in ("INSERT", "UPDATE"):
        db.execute(
            f"CREATE TRIGGER fault_{op.lower()} BEFORE {op} ON credentials "
            "BEGIN SELECT RAISE(ABORT, 'injected fault: disk full'); END"
        )
    try:
        yield
    finally:
        db.execute("DROP TRIGGER fault_insert")
        db.execute("DROP TRIGGER fault_update")
