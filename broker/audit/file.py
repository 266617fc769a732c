"""The file audit sink: append-only JSON lines, hash-chained, fsynced before anyone is told.

Durability without a per-request fsync (group commit): requests queue their records; one
writer takes everything queued, links it into the chain, writes it with one `write` and
one `fsync`, and only then releases the waiting requests. Concurrent requests therefore
share an fsync, and each still returns only after its own record is on disk.

Failure is loud and safe: a write that fails (disk full, permissions, I/O error) or does
not finish within the configured budget fails the waiting requests (503), truncates any
partial line so the chain stays verifiable, and marks the sink unhealthy (`/readyz`
false). While unhealthy, a probe tries once a second to append an `audit.sink_recovered`
record (so the outage itself is on the record); when that succeeds, the sink is healthy.

Rotation by size keeps the chain: the full file is renamed `<name>.<UTC time>` and the
new file starts with an `audit.rotated` record whose `prev_hash` is the old file's last hash.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric import ed25519

from broker.audit.chain import (
    CHECKPOINT_EVENT,
    ROTATED_EVENT,
    ChainState,
    canonical,
    checkpoint_message,
)
from broker.audit.events import AuditEvent
from broker.blocking import DaemonExecutor
from broker.clock import rfc3339
from broker.errors import Unavailable
from broker.fileio import write_atomic
from broker.tasks import stop_task
from broker.typing import Clock

__all__ = ["FileAuditSink"]

log = structlog.get_logger(__name__)

PROBE_INTERVAL_SECONDS = 1.0


class FileAuditSink:
    """An `AuditSink` writing a hash-chained JSON-lines file."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        *,
        chain_id: str,
        fsync: bool = True,
        write_timeout: float = 2.0,
        max_file_bytes: int = 100 * 1024 * 1024,
        signer: ed25519.Ed25519PrivateKey | None = None,
        checkpoint_every: int = 1000,
        stdout: bool = False,
    ) -> None:
        """Create the sink (the file is opened by `start`).

        Args:
            path: The audit file.
            clock: For record and rotation timestamps.
            chain_id: This replica's chain id.
            fsync: Whether to fsync each batch (turn off only for benchmarks).
            write_timeout: Seconds a request waits for its record to be durable.
            max_file_bytes: Rotate when the file would grow past this.
            signer: Ed25519 key for signed checkpoints (none: no checkpoints).
            checkpoint_every: Records between checkpoints.
            stdout: Write to standard output instead of `path` (for log collectors): no
                resume, rotation or fsync; the chain starts afresh with each process.
        """
        self._path = path
        self._clock = clock
        self._chain_id = chain_id
        self._fsync = fsync
        self._timeout = write_timeout
        self._max_bytes = max_file_bytes
        self._signer = signer
        self._checkpoint_every = checkpoint_every
        self._executor = DaemonExecutor(1, "audit-writer")
        self._fd: int | None = None
        self._state = ChainState(chain_id)
        self._queue: list[tuple[dict[str, object], asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._healthy = False
        self._failure: str | None = None
        self._failed_at: datetime | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._since_checkpoint = 0
        self._rotation_note: dict[str, object] | None = None
        self._stdout = stdout
        if stdout:
            self._fsync = False
            self._max_bytes = 1 << 62
        self.batches = 0
        self._lock = asyncio.Lock()  # one batch in flight: the chain never forks
        self._stalled = False
        self._size = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file, resume its chain, start the writer.

        An unwritable file does not stop the broker: the sink starts unhealthy (readiness
        false, issuance 503) and recovers as soon as the probe can write.
        """
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open)
            self._healthy = True
        except OSError as exc:
            self._mark_failed(exc)
        self._tasks = [
            asyncio.create_task(self._writer(), name="audit-writer"),
            asyncio.create_task(self._probe_loop(), name="audit-probe"),
        ]

    async def close(self) -> None:
        """Flush what is queued, write a final checkpoint, close the file."""
        for task in self._tasks:
            await stop_task(task)
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._queue:
                await self._flush()
            if self._signer is not None and self._healthy and self._since_checkpoint:
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(self._timeout):
                        await self._append_records([])
        if self._fd is not None:
            fd, self._fd = self._fd, None
            await loop.run_in_executor(self._executor, os.close, fd)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> bool:
        """Whether the last write (or probe) succeeded."""
        return self._healthy

    # -- writing ----------------------------------------------------------------------------

    async def write(self, event: AuditEvent) -> None:
        """Append a record; returns once it is durable.

        Raises:
            Unavailable: The record could not be written in time (nothing may be issued).
        """
        if self._stalled:
            # A write is stuck past its deadline (a hung disk): fail at once rather than
            # queue behind it; `/readyz` is already false.
            raise Unavailable("the audit trail cannot record the request in time")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (event.to_record(), future)
        self._queue.append(entry)
        self._wakeup.set()
        try:
            # `asyncio.timeout`, not `wait_for`: the same deadline, without the extra waiter
            # future and loop turn per record that `wait_for` costs on Python 3.11.
            async with asyncio.timeout(self._timeout):
                await future
        except TimeoutError:
            # Withdraw the record if the writer has not taken it yet: the request fails,
            # so the record must not appear later claiming it succeeded.
            if entry in self._queue:
                self._queue.remove(entry)
            self._mark_failed(TimeoutError(f"write not durable within {self._timeout:.3f} s"))
            raise Unavailable("the audit trail cannot record the request in time") from None

    async def _writer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            async with self._lock:
                await self._flush()

    async def _flush(self) -> None:
        """Write the queued records; each waiting request learns the outcome in time.

        The records are linked into the chain on the loop, then written and fsynced on
        the writer thread.
        """
        batch, self._queue = self._queue, []
        if not batch:
            return
        # Never cancelled: a write the thread finishes late must still advance the chain
        # head, or the next batch would fork the chain.
        writing = asyncio.ensure_future(  # noqa: RUF006 - awaited below, whatever happens
            self._append_records([r for r, _ in batch])
        )
        done, _ = await asyncio.wait({writing}, timeout=self._timeout)
        failure = writing.exception() if done else None
        if not done or failure is not None:
            self._mark_failed(
                failure or TimeoutError(f"write not durable within {self._timeout:.3f} s")
            )
            # What queued meanwhile fails too: the sink is not writing, and a record must
            # not appear later, claiming a request that was refused succeeded.
            batch, self._queue = batch + self._queue, []
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        Unavailable("the audit trail cannot record the request in time")
                    )
            if not done:
                self._stalled = True
                with contextlib.suppress(OSError):
                    await writing
                self._stalled = False
            return
        self.batches += 1
        self._healthy = True
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _append_records(self, records: list[dict[str, object]]) -> None:
        """Append records to the chain, durably (callers hold `_lock`).

        The hashing and signing run here on the loop; only the file operations go to the
        writer thread (they release the GIL), so it never competes with the loop for it.

        Raises:
            OSError: The file could not be opened, rotated or written; nothing changed.
        """
        loop = asyncio.get_running_loop()
        if self._fd is None:
            await loop.run_in_executor(self._executor, self._reopen)
        if self._size >= self._max_bytes:
            await loop.run_in_executor(self._executor, self._rotate)
        if self._rotation_note is not None:
            records = [self._rotation_note, *records]
        data, state, since, checkpointed = self._link(records)
        head = None
        if checkpointed and not self._stdout:
            head = canonical({"chain": state.chain, "seq": state.seq, "hash": state.head}) + b"\n"
        await loop.run_in_executor(self._executor, self._append, data, head)
        self._state = state
        self._since_checkpoint = since
        self._rotation_note = None
        self._size += len(data)

    def _mark_failed(self, exc: BaseException) -> None:
        if self._healthy or self._failure is None:
            log.error(
                "audit sink failed: refusing to issue until it recovers",
                path=str(self._path),
                error=str(exc) or type(exc).__name__,
            )
            self._failed_at = self._clock.now()
        self._healthy = False
        self._failure = str(exc) or type(exc).__name__

    # -- the writer thread ------------------------------------------------------------------

    def _open(self) -> None:
        if self._stdout:
            self._fd = os.dup(1)
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._state = ChainState.resume(self._chain_id, self._path)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _reopen(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._stdout:
            self._fd = os.dup(1)
            return
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _link(self, records: list[dict[str, object]]) -> tuple[bytes, ChainState, int, bool]:
        """Chain `records` after the current head (no I/O).

        Returns:
            The bytes to append, the new head, the records since the last checkpoint, and
            whether a checkpoint was added.
        """
        state = ChainState(self._state.chain, self._state.seq, self._state.head)
        lines: list[bytes] = []
        since = self._since_checkpoint
        checkpointed = False
        for record in records:
            lines.append(state.link_line(record))
            since += 1
            if self._signer is not None and since >= self._checkpoint_every:
                lines.append(canonical(state.link(self._checkpoint(state))) + b"\n")
                since, checkpointed = 0, True
        if not records and self._signer is not None:  # the final checkpoint at shutdown
            lines.append(canonical(state.link(self._checkpoint(state))) + b"\n")
            since, checkpointed = 0, True
        return b"".join(lines), state, since, checkpointed

    def _append(self, data: bytes, head: bytes | None) -> None:
        """On the writer thread: write and fsync; on failure leave the file as it was."""
        if self._fd is None:
            self._reopen()
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, data)
            if self._fsync:
                os.fsync(self._fd)
        except OSError:
            # Never leave half a line: it would break the chain for every later reader.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            raise
        if head is not None:
            write_atomic(self._path.with_name(self._path.name + ".head"), head, mode=0o600)

    def _rotate(self) -> None:
        """Start a new file; its first record will link to the old file's last hash."""
        assert self._fd is not None
        stamp = datetime.fromtimestamp(self._clock.time(), UTC).strftime("%Y%m%dT%H%M%SZ")
        # The last sequence number makes the name unique and sortable; link() (unlike
        # rename) refuses to replace an existing file, so history is never overwritten.
        rotated = self._path.with_name(f"{self._path.name}.{stamp}-{self._state.seq:012d}")
        os.close(self._fd)
        self._fd = None
        os.link(self._path, rotated)
        self._path.unlink()
        self._reopen()
        log.info("audit file rotated", previous=str(rotated))
        self._rotation_note = {
            "ts": rfc3339(self._clock.now()),
            "event": ROTATED_EVENT,
            "target": {"previous_file": rotated.name},
        }

    def _checkpoint(self, state: ChainState) -> dict[str, object]:
        assert self._signer is not None
        signature = self._signer.sign(checkpoint_message(state.chain, state.seq, state.head))
        return {
            "ts": rfc3339(self._clock.now()),
            "event": CHECKPOINT_EVENT,
            "target": {
                "covers_seq": state.seq,
                "signature": base64.b64encode(signature).decode(),
            },
        }

    # -- recovery ---------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            if self._healthy:
                continue
            record: dict[str, object] = {
                "ts": rfc3339(self._clock.now()),
                "event": "audit.sink_recovered",
                "target": {
                    "failed_at": rfc3339(self._failed_at) if self._failed_at else None,
                    "error": self._failure,
                },
            }
            try:
                async with self._lock, asyncio.timeout(self._timeout):
                    await self._append_records([record])
            except (OSError, TimeoutError):
                continue
            self._healthy = True
            self._failure = None
            log.warning("audit sink recovered", path=str(self._path))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
