"""The audit sink contract, run against every implementation: the file and standard output.

Both are `FileAuditSink`; `stdout=True` writes to whatever file descriptor 1 is when the
sink starts (here: a pipe, like a container runtime's log collector).
The promises: a record is in the file (or the pipe) when `write` returns; records are
hash-chained from 64 zeros; `ready()` is true while writing works. Failure: the device
is full (file: `/dev/full`), or the pipe's reader is gone (EPIPE) or stopped reading (a
full pipe: the write blocks); `write` raises `Unavailable` within the write timeout and
`ready()` turns false.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.audit.chain import GENESIS, record_hash
from broker.audit.events import AuditEvent
from broker.audit.file import FileAuditSink
from broker.errors import Unavailable
from broker.typing import AuditSink
from tests.support.clock import ManualClock

WRITE_TIMEOUT = 0.5


def event(n: int) -> AuditEvent:
    return AuditEvent(
        event="credential.issued",
        ts=datetime.now(UTC),
        request_id=f"r{n}",
        remote="127.0.0.1",
        decision_id=f"d{n}",
        tools=("crm",),
        decision="allow",
    )


@contextlib.contextmanager
def as_stdout(fd: int) -> Iterator[None]:
    """Make `fd` the process's standard output for a moment (the sink dups it at start)."""
    saved = os.dup(1)
    os.dup2(fd, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@dataclass
class Harness:
    sink: AuditSink
    written: Callable[[], list[dict[str, object]]]  # every record that reached the backend


async def start_stdout_sink(clock: ManualClock, write_end: int) -> FileAuditSink:
    sink = FileAuditSink(
        Path("/dev/stdout"), clock, chain_id="pod-1", stdout=True, write_timeout=WRITE_TIMEOUT
    )
    with as_stdout(write_end):
        await sink.start()
    return sink


@pytest.fixture(params=["file", "stdout"])
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Harness]:
    """Each implementation, started, with a way to read back what reached its backend."""
    if request.param == "file":
        path = tmp_path / "audit.log"
        sink = FileAuditSink(path, clock, chain_id="replica-a", write_timeout=WRITE_TIMEOUT)
        await sink.start()

        def read_file() -> list[dict[str, object]]:
            return [json.loads(line) for line in path.read_text().splitlines()]

        yield Harness(sink, read_file)
        await sink.close()
        return
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    received = bytearray()

    def read_pipe() -> list[dict[str, object]]:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read_end, 65536):
                received.extend(chunk)
        return [json.loads(line) for line in received.decode().splitlines()]

    sink = await start_stdout_sink(clock, write_end)
    os.close(write_end)  # the sink holds its own copy
    yield Harness(sink, read_pipe)
    await sink.close()
    os.close(read_end)


@pytest.fixture(params=["file", "stdout-unread", "stdout-full"])
async def failing_sink(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[AuditSink]:
    """Each implementation, started on a backend that refuses (or never finishes) writes."""
    sink: FileAuditSink
    if request.param == "file":
        path = tmp_path / "audit.log"
        path.symlink_to("/dev/full")  # opens fine; every write: ENOSPC
        sink = FileAuditSink(path, clock, chain_id="replica-a", write_timeout=WRITE_TIMEOUT)
        await sink.start()
        yield sink
        await sink.close()
        return
    read_end, write_end = os.pipe()
    if request.param == "stdout-unread":
        sink = await start_stdout_sink(clock, write_end)
        os.close(write_end)
        os.close(read_end)  # nobody reads: every write is EPIPE
        yield sink
        await sink.close()
        return
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:  # fill the pipe: a reader that stopped reading (a stuck collector)
            os.write(write_end, b"x" * 65536)
    os.set_blocking(write_end, True)  # the sink's write blocks, as on a real stdout
    sink = await start_stdout_sink(clock, write_end)
    os.close(write_end)
    yield sink
    os.set_blocking(read_end, False)
    with contextlib.suppress(BlockingIOError):
        while os.read(read_end, 65536):  # unblock the writer thread so close() can finish
            pass
    await sink.close()
    os.close(read_end)


async def test_a_record_is_at_the_backend_when_write_returns(harness: Harness) -> None:
    """After each write returns, its record is already in the file or the pipe."""
    assert harness.sink.ready()
    for n in range(3):
        await harness.sink.write(event(n))
        records = harness.written()
        assert len(records) == n + 1
        assert records[-1]["request_id"] == f"r{n}"
    assert harness.sink.ready()


async def test_records_are_hash_chained_from_64_zeros(harness: Harness) -> None:
    """prev_hash of the first record is 64 zeros, of each next the previous record's hash."""
    for n in range(3):
        await harness.sink.write(event(n))
    records = harness.written()
    assert records[0]["prev_hash"] == GENESIS
    for previous, current in itertools.pairwise(records):
        assert current["prev_hash"] == previous["hash"]
    assert all(r["hash"] == record_hash(r) for r in records)
    assert [r["seq"] for r in records] == [1, 2, 3]


async def test_backend_failure_is_unavailable_in_time_and_not_ready(
    failing_sink: AuditSink,
) -> None:
    """Device full, pipe closed or full: Unavailable within the write timeout; not ready."""
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await failing_sink.write(event(1))
    assert time.monotonic() - started < WRITE_TIMEOUT + 0.5
    assert not failing_sink.ready()
