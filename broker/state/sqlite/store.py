"""The embedded state store: one SQLite file (WAL), shared by the processes of one host.

Reads run on the event loop, on a connection of their own: in WAL mode a read never
waits for a writer and answers in microseconds, cheaper than any thread hop. Writes
(credential records, revocations, limits, replay marks) are group-committed: each request
queues its operation, one writer thread runs everything queued in one transaction (each
operation in a savepoint of its own) and wakes the loop once per batch. A write returns
once its transaction committed, so a record is durable and visible to every process (the
`--workers` of one host) when the call returns. Every SQLite error becomes `Unavailable`.

Rows carry their expiry and a purge deletes what has expired, so the file does not grow
without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar, cast

import structlog

from broker.domain import LimitCheck, UserRef
from broker.errors import Unavailable
from broker.groupcommit import GroupCommitter
from broker.state.base import CredentialRecord, LimitResult, budget_key
from broker.tasks import stop_task
from broker.typing import Clock

__all__ = ["SqliteStateStore"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

PURGE_INTERVAL_SECONDS = 60.0

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
CREATE TABLE IF NOT EXISTS budgets (
    key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, until REAL NOT NULL);
"""

SCHEMA_VERSION = 1


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
            write_timeout: Seconds a write waits for its batch to commit.
        """
        self._path = path
        self._clock = clock
        self._write_timeout = write_timeout
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._committer: GroupCommitter[Callable[[sqlite3.Connection], object]] = GroupCommitter(
            "sqlite-state", self._run_batch
        )
        self._task: asyncio.Task[None] | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _run_batch(self, ops: Sequence[Callable[[sqlite3.Connection], object]]) -> list[object]:
        """On the writer thread: one transaction, one savepoint per operation."""
        if self._writer is None:
            self._writer = self._connect()
        db = self._writer
        results: list[object] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                db.execute("SAVEPOINT op")
                try:
                    result = op(db)
                    if isinstance(result, sqlite3.Cursor):
                        result.close()  # a cursor never crosses to the loop's thread
                        result = None
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO op")
                    result = exc
                db.execute("RELEASE op")
                results.append(result)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return results

    @staticmethod
    def _unavailable(exc: BaseException) -> Unavailable:
        # Every backend error becomes `Unavailable`: the pipeline's fail-closed path
        # (undo, refund, `credential.failed`, 503) only ever sees the broker's errors.
        log.error("state store (SQLite) failed", error=str(exc) or type(exc).__name__)
        return Unavailable("the state store (SQLite) is unavailable")

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run a write in the next batch; returns once its transaction committed."""
        future = self._committer.submit(op)
        try:
            return cast("T", await asyncio.wait_for(asyncio.shield(future), self._write_timeout))
        except (sqlite3.Error, TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on the loop's own connection (WAL: never waits for a writer)."""
        if self._reader is None:
            raise Unavailable("the state store (SQLite) is not open")
        try:
            return op(self._reader)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file (0600), create or migrate the schema, start the writer.

        Raises:
            Unavailable: The file cannot be opened or prepared.
        """

        def prepare() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.touch(mode=0o600, exist_ok=True)
            db = self._connect()
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                _migrate(db)
            finally:
                db.close()

        try:
            await asyncio.to_thread(prepare)
            self._reader = self._connect()
            self._reader.execute("PRAGMA busy_timeout=100")
        except (OSError, sqlite3.Error) as exc:
            raise self._unavailable(exc) from exc
        self._committer.start()
        self._task = asyncio.create_task(self._purge_loop(), name="sqlite-state-purge")

    async def close(self) -> None:
        """Stop purging, finish queued writes, close the file."""
        await stop_task(self._task)
        self._task = None
        await asyncio.to_thread(self._committer.stop)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def batches(self) -> int:
        """Write batches committed so far."""
        return self._committer.batches

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
            db.execute("DELETE FROM rate_events WHERE ts <= ?", (now - 86400,))

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
                    db.execute(
                        "DELETE FROM rate_events WHERE key = ? AND member LIKE ?",
                        (check.key, f"{member}:%"),
                    )
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
            db.execute(
                "DELETE FROM rate_events WHERE key = ? AND ts <= ?",
                (check.key, now - check.window_seconds),
            )
            (count,) = db.execute(
                "SELECT count(*) FROM rate_events WHERE key = ?", (check.key,)
            ).fetchone()
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
        else:
            key, ends = budget_key(check, now)
            db.execute(
                "INSERT INTO budgets (key, count, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET count = count + excluded.count",
                (key, check.cost, ends),
            )
    return LimitResult(allowed=True)
