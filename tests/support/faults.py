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


def crash_server(pid: int, port: int, timeout: float = 5.0) -> None:
    """Kill a server process (SIGKILL: a crash, no goodbye) and wait until its port refuses.

    Waits on the port rather than the PID: a daemonized server is not our child, and a
    zombie nobody reaps would still answer `kill(pid, 0)`.
    """
    import contextlib
    import os
    import signal
    import socket
    import time

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.02)
    raise RuntimeError(f"process {pid} still accepts connections on port {port}")
