"""The embedded state store: one SQLite file (WAL), shared by the processes of one host.

Everything runs on the event loop, with no thread: SQLite in WAL mode answers a short
statement in microseconds, far less than a thread hop costs (and than the GIL contention
a writer thread causes). Reads never wait for a writer. Writes (credential records,
revocations, limits, replay marks) are group-committed: the writes queued during one turn
of the loop are committed together in one transaction, each in a savepoint of its own,
so that concurrent requests share a commit. A write returns once its transaction
committed: the record is visible to every process of the host (`--workers`) when the
call returns. (`synchronous=NORMAL`: a commit survives a crash of the process; the audit
trail, fsynced, is the record that survives a power loss.) The write lock is never waited
for on the loop: a batch finding it held by another process is retried a millisecond
later. WAL checkpoints, which fsync, run on a thread. Every SQLite error becomes
`Unavailable`.

Rows carry their expiry and a purge deletes what has expired, so the file does not grow
without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import structlog

from broker.domain import LimitCheck, UserRef
from broker.errors import Unavailable
from broker.state.base import (
    APPROVAL_MEMORY_SECONDS,
    ApprovalRecord,
    CredentialRecord,
    LimitResult,
    approval_from_json,
    approval_to_json,
    budget_key,
)
from broker.tasks import stop_task
from broker.typing import Clock

__all__ = ["SqliteStateStore"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

PURGE_INTERVAL_SECONDS = 60.0
CHECKPOINT_INTERVAL_SECONDS = 1.0
BUSY_RETRY_SECONDS = 0.001
PREPARE_ATTEMPTS = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    id TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    type TEXT NOT NULL,
    agent TEXT NOT NULL,
    user TEXT,
    decision_id TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    lease_id TEXT,
    lease_released INTEGER NOT NULL DEFAULT 0,
    scope TEXT NOT NULL DEFAULT '',
    audience TEXT,
    user_tier TEXT,
    user_groups TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS credentials_agent ON credentials (agent, expires_at);
CREATE INDEX IF NOT EXISTS credentials_expiry ON credentials (expires_at);
CREATE TABLE IF NOT EXISTS revoked_agents (agent TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rate_events (key TEXT NOT NULL, member TEXT NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_events_key ON rate_events (key, ts);
CREATE TABLE IF NOT EXISTS rate_counts (key TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS budgets (
    key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, forget_at REAL NOT NULL, body TEXT NOT NULL
);
"""

SCHEMA_VERSION = 2


def _locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _fail(
    batch: list[tuple[Callable[[sqlite3.Connection], object], asyncio.Future[Any]]],
    exc: BaseException,
) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file written by an older broker to `SCHEMA_VERSION`."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version < 1:
        # v0 kept the user as the string `issuer#subject`; v1 keeps [issuer, subject].
        db.execute(
            "UPDATE credentials SET user = json_array("
            "substr(user, 1, instr(user, '#') - 1), substr(user, instr(user, '#') + 1)) "
            "WHERE user IS NOT NULL AND substr(user, 1, 1) != '['"
        )
    if version < 2:  # noqa: PLR2004 - schema versions
        # v2 counts each rate key's live events in `rate_counts` (O(1) per check).
        db.execute("DELETE FROM rate_counts")
        db.execute("INSERT INTO rate_counts SELECT key, count(*) FROM rate_events GROUP BY key")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


_COLUMNS = (
    "id, tool, type, agent, user, decision_id, issued_at, expires_at, revoked, lease_id, "
    "scope, audience, user_tier, user_groups"
)


def _record(row: tuple[object, ...]) -> CredentialRecord:
    return CredentialRecord(
        credential_id=str(row[0]),
        tool=str(row[1]),
        type=str(row[2]),
        agent=str(row[3]),
        user=None if row[4] is None else UserRef(*json.loads(str(row[4]))),
        decision_id=str(row[5]),
        issued_at=float(row[6]),  # type: ignore[arg-type]
        expires_at=float(row[7]),  # type: ignore[arg-type]
        revoked=bool(row[8]),
        lease_id=None if row[9] is None else str(row[9]),
        scope=str(row[10]),
        audience=None if row[11] is None else str(row[11]),
        user_tier=None if row[12] is None else str(row[12]),
        user_groups=tuple(json.loads(str(row[13]))),
    )


class SqliteStateStore:
    """A `StateStore` in one SQLite file."""

    def __init__(self, path: Path, clock: Clock, *, write_timeout: float = 5.0) -> None:
        """Create the store (the file is opened by `start`).

        Args:
            path: The database file (created 0600).
            clock: For expiries.
            write_timeout: Seconds a write may wait for its batch to commit (another
                process holding the write lock the whole time: 503).
        """
        self._path = path
        self._clock = clock
        self._write_timeout = write_timeout
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], object], asyncio.Future[Any]]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._busy_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0  # write transactions committed (the hot-path regression test reads it)
        self.writes = 0  # write operations queued

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self, *, busy_timeout_ms: int) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @staticmethod
    def _unavailable(exc: BaseException) -> Unavailable:
        # Every backend error becomes `Unavailable`: the pipeline's fail-closed path
        # (undo, refund, `credential.failed`, 503) only ever sees the broker's errors.
        log.error("state store (SQLite) failed", error=str(exc) or type(exc).__name__)
        return Unavailable("the state store (SQLite) is unavailable")

    def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on the loop (WAL: a reader never waits for a writer)."""
        if self._db is None:
            raise Unavailable("the state store (SQLite) is not open")
        try:
            return op(self._db)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Queue a write for this loop turn's batch; returns once the batch committed."""
        if self._db is None:
            raise Unavailable("the state store (SQLite) is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        self.writes += 1
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        try:
            return cast("T", await future)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    def _flush(self) -> None:
        """Commit every write queued during this loop turn: one transaction, a savepoint each.

        The lock is taken without waiting: when another process (a `--workers` sibling)
        holds it, the batch is retried a millisecond later instead of blocking the loop,
        and fails (503) once it has waited `write_timeout`.
        """
        self._flush_handle = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        db = self._db
        if db is None:
            _fail(batch, Unavailable("the state store (SQLite) is closed"))
            return
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _locked(exc) and self._retry(batch):
                return
            _fail(batch, exc)
            return
        except sqlite3.Error as exc:
            _fail(batch, exc)
            return
        self._busy_since = None
        results = self._run(db, batch)
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            _fail(batch, exc)
            return
        self.batches += 1
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    @staticmethod
    def _run(
        db: sqlite3.Connection,
        batch: list[tuple[Callable[[sqlite3.Connection], object], asyncio.Future[Any]]],
    ) -> list[object]:
        """Run a batch inside the open transaction; one result (or error) per operation.

        The common case runs straight through. Only when an operation fails is the batch
        rolled back to its start and run again with a savepoint around each operation, so
        that one failing operation fails alone.
        """
        db.execute("SAVEPOINT batch")
        try:
            results = [op(db) for op, _ in batch]
        except sqlite3.Error:
            db.execute("ROLLBACK TO batch")
            results = []
            for op, _ in batch:
                db.execute("SAVEPOINT op")
                try:
                    result = op(db)
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO op")
                    result = exc
                db.execute("RELEASE op")
                results.append(result)
        db.execute("RELEASE batch")
        return [None if isinstance(r, sqlite3.Cursor) else r for r in results]

    def _retry(
        self, batch: list[tuple[Callable[[sqlite3.Connection], object], asyncio.Future[Any]]]
    ) -> bool:
        """Put a batch back for a retry; False once it has waited too long."""
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        if now - self._busy_since > self._write_timeout:
            self._busy_since = None
            return False
        self._pending[:0] = batch
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                BUSY_RETRY_SECONDS, self._flush
            )
        return True

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file (0600), create or migrate the schema.

        Raises:
            Unavailable: The file cannot be opened or prepared.
        """

        def prepare() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.touch(mode=0o600, exist_ok=True)
            db = self._connect(busy_timeout_ms=5000)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                _migrate(db)
            finally:
                db.close()

        try:
            await self._prepare_with_retries(prepare)
            # The loop's connection never waits for a lock (see `_flush`) and never
            # checkpoints: that fsyncs, so `_checkpoint_loop` does it on a thread.
            self._db = self._connect(busy_timeout_ms=0)
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        except (OSError, sqlite3.Error) as exc:
            raise self._unavailable(exc) from exc
        self._tasks = [
            asyncio.create_task(self._purge_loop(), name="sqlite-state-purge"),
            asyncio.create_task(self._checkpoint_loop(), name="sqlite-state-checkpoint"),
        ]

    async def close(self) -> None:
        """Stop the background tasks, commit what is queued, close the file."""
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._flush()
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    async def _prepare_with_retries(self, prepare: Callable[[], None]) -> None:
        """Prepare the file; a sibling process (`--workers`) preparing it too is waited for.

        Switching to WAL and creating the schema take locks that SQLite does not always
        wait for (its busy handler is skipped where waiting could deadlock), so two
        workers starting on a new file can see "database is locked": try again a few
        times, briefly.
        """
        for attempt in range(PREPARE_ATTEMPTS):
            try:
                await asyncio.to_thread(prepare)
            except sqlite3.OperationalError as exc:
                if not _locked(exc) or attempt == PREPARE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
            else:
                return

    async def _checkpoint_loop(self) -> None:
        def checkpoint() -> None:
            db = self._connect(busy_timeout_ms=1000)
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                db.close()

        while True:
            await self._clock.sleep(CHECKPOINT_INTERVAL_SECONDS)
            try:
                await asyncio.to_thread(checkpoint)
            except sqlite3.Error as exc:
                log.warning("state store checkpoint failed; retrying", error=str(exc))

    async def ping(self) -> bool:
        """Whether the file answers a query (never raises)."""
        try:
            self._read(lambda db: db.execute("SELECT 1").fetchone())
        except Unavailable:
            return False
        return True

    async def _purge_loop(self) -> None:
        while True:
            await self._clock.sleep(PURGE_INTERVAL_SECONDS)
            with contextlib.suppress(Unavailable):  # logged; retried next time
                await self.purge()

    async def purge(self) -> None:
        """Delete everything that has expired (kept: leases not yet released)."""
        now = self._clock.time()

        def purge(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM credentials WHERE expires_at <= ? "
                "AND (lease_id IS NULL OR lease_released = 1)",
                (now,),
            )
            db.execute("DELETE FROM revoked_agents WHERE until <= ?", (now,))
            db.execute("DELETE FROM budgets WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM seen WHERE until <= ?", (now,))
            # Rate events older than the longest window any limit can have.
            _forget_rate_events(db, "ts <= ?", (now - 86400,))

        await self._write(purge)

    # -- credentials ------------------------------------------------------------------------

    async def put_credentials(self, records: Sequence[CredentialRecord]) -> None:
        """Remember issued credentials (durable when this returns)."""
        rows = [
            (
                r.credential_id,
                r.tool,
                r.type,
                r.agent,
                None if r.user is None else json.dumps([r.user.issuer, r.user.subject]),
                r.decision_id,
                r.issued_at,
                r.expires_at,
                int(r.revoked),
                r.lease_id,
                r.scope,
                r.audience,
                r.user_tier,
                json.dumps(list(r.user_groups)),
            )
            for r in records
        ]
        await self._write(
            lambda db: db.executemany(
                f"INSERT OR REPLACE INTO credentials ({_COLUMNS}) "  # noqa: S608 - fixed columns
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
        )

    async def get_credential(self, credential_id: str) -> CredentialRecord | None:
        """A live credential, or None."""
        now = self._clock.time()
        row = self._read(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM credentials WHERE id = ? AND expires_at > ?",  # noqa: S608
                (credential_id, now),
            ).fetchone()
        )
        return _record(row) if row else None

    async def revoke_credential(self, credential_id: str) -> CredentialRecord | None:
        """Mark a live credential revoked."""
        now = self._clock.time()

        def revoke(db: sqlite3.Connection) -> tuple[object, ...] | None:
            db.execute(
                "UPDATE credentials SET revoked = 1 WHERE id = ? AND expires_at > ?",
                (credential_id, now),
            )
            return db.execute(  # type: ignore[no-any-return]
                f"SELECT {_COLUMNS} FROM credentials WHERE id = ? AND expires_at > ?",  # noqa: S608
                (credential_id, now),
            ).fetchone()

        row = await self._write(revoke)
        return _record(row) if row else None

    async def agent_credentials(self, agent: str) -> list[CredentialRecord]:
        """Live credentials of an agent."""
        now = self._clock.time()
        rows = self._read(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM credentials WHERE agent = ? AND expires_at > ?",  # noqa: S608
                (agent, now),
            ).fetchall()
        )
        return [_record(r) for r in rows]

    # -- agents -----------------------------------------------------------------------------

    async def revoke_agent(self, agent: str, until: float) -> None:
        """Refuse an agent until `until`."""
        await self._write(
            lambda db: db.execute(
                "INSERT INTO revoked_agents (agent, until) VALUES (?, ?) "
                "ON CONFLICT(agent) DO UPDATE SET until = max(until, excluded.until)",
                (agent, until),
            )
        )

    async def agent_revoked(self, agent: str) -> bool:
        """Whether an agent is revoked (one indexed read: every process sees it at once)."""
        now = self._clock.time()
        row = self._read(
            lambda db: db.execute(
                "SELECT 1 FROM revoked_agents WHERE agent = ? AND until > ?", (agent, now)
            ).fetchone()
        )
        return row is not None

    # -- limits and replay ------------------------------------------------------------------

    async def consume_limits(
        self, checks: Sequence[LimitCheck], member: str, now: float
    ) -> LimitResult:
        """Consume every limit atomically (one savepoint of a write batch), or none."""
        return await self._write(lambda db: _consume(db, checks, member, now))

    async def refund_limits(self, checks: Sequence[LimitCheck], member: str, now: float) -> None:
        """Give back what `member` consumed."""

        def refund(db: sqlite3.Connection) -> None:
            for check in checks:
                if check.kind == "rate":
                    _forget_rate_events(db, "key = ? AND member LIKE ?", (check.key, f"{member}:%"))
                else:
                    key, _ = budget_key(check, now)
                    db.execute(
                        "UPDATE budgets SET count = max(0, count - ?) WHERE key = ?",
                        (check.cost, key),
                    )

        await self._write(refund)

    async def first_use(self, key: str, until: float) -> bool:
        """Record `key`; False if it is already recorded and unexpired."""
        now = self._clock.time()

        def record(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM seen WHERE key = ? AND until <= ?", (key, now))
            cursor = db.execute(
                "INSERT OR IGNORE INTO seen (key, until) VALUES (?, ?)", (key, until)
            )
            return cursor.rowcount == 1

        return await self._write(record)

    # -- approvals --------------------------------------------------------------------------

    async def put_approval(self, record: ApprovalRecord) -> None:
        """Remember a pending approval (and forget those lapsed over a day ago)."""
        now = self._clock.time()

        def put(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM approvals WHERE forget_at <= ?", (now,))
            db.execute(
                "INSERT INTO approvals (id, status, forget_at, body) VALUES (?, ?, ?, ?)",
                (
                    record.approval_id,
                    record.status,
                    record.expires_at + APPROVAL_MEMORY_SECONDS,
                    approval_to_json(record),
                ),
            )

        await self._write(put)

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        """An approval, or None (also once forgotten, even before `put_approval` purges it)."""
        now = self._clock.time()
        row = self._read(
            lambda db: db.execute(
                "SELECT body FROM approvals WHERE id = ? AND forget_at > ?", (approval_id, now)
            ).fetchone()
        )
        return approval_from_json(row[0]) if row else None

    async def set_approval_status(
        self,
        approval_id: str,
        *,
        expected: str,
        status: str,
        approver: str | None = None,
        reason: str | None = None,
    ) -> ApprovalRecord | None:
        """Compare-and-set the status in one transaction (a forgotten approval is unknown)."""
        now = self._clock.time()

        def update(db: sqlite3.Connection) -> ApprovalRecord | None:
            row = db.execute(
                "SELECT body FROM approvals WHERE id = ? AND status = ? AND forget_at > ?",
                (approval_id, expected, now),
            ).fetchone()
            if row is None:
                return None
            current = approval_from_json(row[0])
            updated = dataclasses.replace(
                current,
                status=status,
                approver=approver if approver is not None else current.approver,
                reason=reason if reason is not None else current.reason,
            )
            db.execute(
                "UPDATE approvals SET status = ?, body = ? WHERE id = ?",
                (status, approval_to_json(updated), approval_id),
            )
            return updated

        return await self._write(update)

    # -- leases -----------------------------------------------------------------------------

    async def leases_to_release(self, now: float) -> list[CredentialRecord]:
        """Leases past expiry or revoked that their issuer has not released yet."""
        rows = self._read(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM credentials WHERE lease_id IS NOT NULL "  # noqa: S608
                "AND lease_released = 0 AND (expires_at <= ? OR revoked = 1)",
                (now,),
            ).fetchall()
        )
        return [_record(r) for r in rows]

    async def lease_released(self, credential_id: str) -> None:
        """Forget a released lease."""
        await self._write(
            lambda db: db.execute(
                "UPDATE credentials SET lease_released = 1 WHERE id = ?", (credential_id,)
            )
        )


def _consume(
    db: sqlite3.Connection, checks: Sequence[LimitCheck], member: str, now: float
) -> LimitResult:
    for check in checks:
        if check.kind == "rate":
            expired = db.execute(
                "DELETE FROM rate_events WHERE key = ? AND ts <= ?",
                (check.key, now - check.window_seconds),
            ).rowcount
            if expired > 0:
                _count_rate_events(db, check.key, -expired)
            row = db.execute("SELECT count FROM rate_counts WHERE key = ?", (check.key,)).fetchone()
            count = row[0] if row else 0
            if count + check.cost > check.limit:
                need = count + check.cost - check.limit
                (oldest,) = db.execute(
                    "SELECT ts FROM rate_events WHERE key = ? ORDER BY ts LIMIT 1 OFFSET ?",
                    (check.key, need - 1),
                ).fetchone() or (now,)
                retry = oldest + check.window_seconds - now
                return LimitResult(
                    allowed=False,
                    key=check.key,
                    kind=check.kind,
                    retry_after=max(1, math.ceil(retry)),
                )
        else:
            key, ends = budget_key(check, now)
            row = db.execute("SELECT count FROM budgets WHERE key = ?", (key,)).fetchone()
            if (row[0] if row else 0) + check.cost > check.limit:
                return LimitResult(
                    allowed=False,
                    key=check.key,
                    kind=check.kind,
                    retry_after=max(1, math.ceil(ends - now)),
                )
    for check in checks:
        if check.kind == "rate":
            db.executemany(
                "INSERT INTO rate_events (key, member, ts) VALUES (?, ?, ?)",
                [(check.key, f"{member}:{i}", now) for i in range(check.cost)],
            )
            _count_rate_events(db, check.key, check.cost)
        else:
            key, ends = budget_key(check, now)
            db.execute(
                "INSERT INTO budgets (key, count, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET count = count + excluded.count",
                (key, check.cost, ends),
            )
    return LimitResult(allowed=True)


# A sliding-window rate limit keeps one row per event in `rate_events`, and `rate_counts`
# keeps how many each key holds, in the same transaction as every insert and delete: a
# check reads one row instead of counting the window (which grows with the limit).


def _count_rate_events(db: sqlite3.Connection, key: str, delta: int) -> None:
    db.execute(
        "INSERT INTO rate_counts (key, count) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET count = count + excluded.count",
        (key, delta),
    )
    if delta < 0:
        db.execute("DELETE FROM rate_counts WHERE key = ? AND count <= 0", (key,))


def _forget_rate_events(db: sqlite3.Connection, where: str, params: tuple[object, ...]) -> None:
    """Delete the rate events matching `where`, keeping `rate_counts` exact."""
    gone = db.execute(
        f"SELECT key, count(*) FROM rate_events WHERE {where} GROUP BY key",  # noqa: S608 - fixed
        params,
    ).fetchall()
    if gone:
        db.execute(f"DELETE FROM rate_events WHERE {where}", params)  # noqa: S608 - fixed
        for key, count in gone:
            _count_rate_events(db, key, -count)
