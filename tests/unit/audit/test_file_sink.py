"""The file audit sink: chain, group commit, rotation, checkpoints, failure and recovery."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from broker.audit.chain import GENESIS, ChainState, canonical, verify_files
from broker.audit.events import AuditEvent
from broker.audit.file import FileAuditSink
from broker.errors import Unavailable
from tests.support.clock import ManualClock


def event(n: int) -> AuditEvent:
    return AuditEvent(
        event="credential.issued",
        ts=datetime.now(UTC),
        request_id=f"r{n}",
        remote="127.0.0.1",
        decision_id=f"d{n}",
        tools=("crm",),
        decision="allow",
        reason="café ✓",
    )


async def sink_with(path: Path, clock: ManualClock, **options: object) -> FileAuditSink:
    sink = FileAuditSink(path, clock, chain_id="replica-a", **options)  # type: ignore[arg-type]
    await sink.start()
    return sink


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def verify_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "audit", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_records_are_chained_from_64_zeros(tmp_path: Path, clock: ManualClock) -> None:
    """First prev_hash is 64 zeros; each record links to the previous hash; seq counts up."""
    path = tmp_path / "audit.log"
    sink = await sink_with(path, clock)
    for n in range(3):
        await sink.write(event(n))
    await sink.close()
    records = lines(path)
    assert records[0]["prev_hash"] == GENESIS
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[1]["prev_hash"] == records[0]["hash"]
    assert {r["chain"] for r in records} == {"replica-a"}
    assert verify_files([path]).ok
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_a_restart_continues_the_chain(tmp_path: Path, clock: ManualClock) -> None:
    """A new sink on an existing file links to its last record."""
    path = tmp_path / "audit.log"
    for _ in range(2):
        sink = await sink_with(path, clock)
        await sink.write(event(1))
        await sink.close()
    records = lines(path)
    assert records[1]["prev_hash"] == records[0]["hash"]
    assert records[1]["seq"] == 2


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is installed by `make test`")
async def test_third_party_verification_with_jq_and_sha256sum(
    tmp_path: Path, clock: ManualClock
) -> None:
    """The README's one-liner (jq -cjS 'del(.hash)' | sha256sum) reproduces every hash."""
    path = tmp_path / "audit.log"
    sink = await sink_with(path, clock)
    for n in range(3):
        await sink.write(event(n))
    await sink.close()
    for raw, record in zip(path.read_text().splitlines(), lines(path), strict=True):
        canonical = subprocess.run(
            ["jq", "-cjS", "del(.hash)"], input=raw.encode(), capture_output=True, check=True
        ).stdout
        digest = subprocess.run(
            ["sha256sum"], input=canonical, capture_output=True, check=True
        ).stdout
        assert digest.decode().split()[0] == record["hash"]


@pytest.fixture
async def log_of_six(tmp_path: Path, clock: ManualClock) -> Path:
    """An audit file with six records."""
    path = tmp_path / "audit.log"
    sink = await sink_with(path, clock)
    for n in range(6):
        await sink.write(event(n))
    await sink.close()
    return path


def test_verify_cli_accepts_an_intact_log(log_of_six: Path) -> None:
    """`broker audit verify` exits 0 on an intact chain."""
    result = verify_cli(str(log_of_six))
    assert result.returncode == 0, result.stdout
    assert "6 records intact" in result.stdout


def _rewrite(path: Path, transform: object) -> None:
    raw = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(transform(raw)))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("tamper", "line"),
    [
        ("byte", 3),
        ("delete", 3),
        ("reorder", 3),
        ("head", 1),
    ],
)
def test_verify_cli_names_the_first_bad_line(log_of_six: Path, tamper: str, line: int) -> None:
    """A changed byte, a deleted line, a swapped pair or a cut head: non-zero, line named."""
    if tamper == "byte":
        raw = log_of_six.read_bytes()
        offset = raw.index(b'"request_id":"r2"') + len('"request_id":"r')
        log_of_six.write_bytes(raw[:offset] + b"9" + raw[offset + 1 :])
    elif tamper == "delete":
        _rewrite(log_of_six, lambda lines: lines[:2] + lines[3:])
    elif tamper == "reorder":
        _rewrite(log_of_six, lambda lines: [*lines[:2], lines[3], lines[2], *lines[4:]])
    else:
        _rewrite(log_of_six, lambda lines: lines[2:])
    result = verify_cli(str(log_of_six))
    assert result.returncode != 0
    assert f"audit.log:{line}:" in result.stdout, result.stdout


async def test_truncated_tail_is_detected_with_signed_checkpoints(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Checkpoints sign the chain head and record it beside the log: a cut tail shows."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = tmp_path / "checkpoint.pub"
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public.write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    path = tmp_path / "audit.log"
    sink = await sink_with(path, clock, signer=key, checkpoint_every=3)
    for n in range(7):
        await sink.write(event(n))
    await sink.close()
    assert (
        sum(1 for r in lines(path) if r["event"] == "audit.checkpoint") == 3
    )  # 2 periodic + final
    ok = verify_cli(str(path), "--public-key", str(public))
    assert ok.returncode == 0, ok.stdout
    assert "3 checkpoints verified" in ok.stdout

    _rewrite(path, lambda lines: lines[:-3])
    cut = verify_cli(str(path))
    assert cut.returncode != 0
    assert "truncated" in cut.stdout

    other = ed25519.Ed25519PrivateKey.generate()
    forged = tmp_path / "other.pub"
    forged.write_bytes(
        other.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    wrong = verify_cli(str(path), "--public-key", str(forged), "--no-head")
    assert wrong.returncode != 0
    assert "signature does not verify" in wrong.stdout


async def test_rotation_keeps_the_chain_across_files(tmp_path: Path, clock: ManualClock) -> None:
    """A full file is rotated; the next starts with audit.rotated linked to the last hash."""
    path = tmp_path / "audit.log"
    sink = await sink_with(path, clock, max_file_bytes=2048)
    for n in range(20):
        await sink.write(event(n))
    await sink.close()
    rotated = sorted(tmp_path.glob("audit.log.*"))
    assert rotated, "expected at least one rotated file"
    files = [*rotated, path]
    assert verify_files(files).ok
    assert sum(len(lines(f)) for f in files) == 20 + len(rotated)
    first_of_current = lines(path)[0]
    assert first_of_current["event"] == "audit.rotated"
    assert first_of_current["prev_hash"] == lines(rotated[-1])[-1]["hash"]
    assert verify_files([path]).ok  # alone, a continuation is accepted
    result = verify_cli(*map(str, files))
    assert result.returncode == 0, result.stdout


async def test_group_commit_shares_fsyncs(tmp_path: Path, clock: ManualClock) -> None:
    """Concurrent writes are durable when they return, and share batches (fewer fsyncs)."""
    path = tmp_path / "audit.log"
    sink = await sink_with(path, clock)
    await asyncio.gather(*(sink.write(event(n)) for n in range(200)))
    assert len(lines(path)) == 200
    assert sink.batches < 200
    await sink.close()
    assert verify_files([path]).ok


async def test_disk_full_fails_closed_and_recovers(tmp_path: Path, clock: ManualClock) -> None:
    """A full device: Unavailable, not ready; recovery is recorded once writes succeed."""
    path = tmp_path / "audit.log"
    path.symlink_to("/dev/full")  # every write: ENOSPC
    sink = await sink_with(path, clock)
    with pytest.raises(Unavailable):
        await sink.write(event(1))
    assert not sink.ready()
    path.unlink()
    path.write_bytes(b"")  # space again
    from tests.support.broker import eventually

    await eventually(sink.ready, within=5)
    await sink.write(event(2))
    await sink.close()
    records = lines(path)
    assert records[0]["event"] == "audit.sink_recovered"
    assert "No space left" in str(records[0]["target"]["error"])  # type: ignore[index]
    assert [r["event"] for r in records[1:]] == ["credential.issued"]
    assert verify_files([path]).ok


async def test_slow_sink_over_budget_fails_closed(tmp_path: Path, clock: ManualClock) -> None:
    """A write that cannot complete within the budget is Unavailable, not a hang."""
    path = tmp_path / "audit.fifo"
    os.mkfifo(path)  # opening it for writing blocks until a reader appears
    sink = FileAuditSink(path, clock, chain_id="x", write_timeout=0.3)
    task = asyncio.create_task(sink.start())
    await asyncio.sleep(0.1)
    with pytest.raises(Unavailable, match="in time"):
        await sink.write(event(1))
    assert not sink.ready()
    # The writer is stuck on that first record; a second one times out while still queued
    # and is withdrawn, so it can never be written later as if its request had succeeded.
    with pytest.raises(Unavailable):
        await sink.write(event(2))
    assert sink._queue == []
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # unblock the writer thread
    await task
    await sink.close()
    os.close(reader)


async def test_stdout_sink_writes_the_chain_to_standard_output(
    clock: ManualClock, capfd: pytest.CaptureFixture[str]
) -> None:
    """sink=stdout: the same chained records, as lines on standard output."""
    from broker.audit.chain import verify_files

    sink = FileAuditSink(Path("/dev/stdout"), clock, chain_id="pod-1", stdout=True)
    await sink.start()
    await sink.write(event(1))
    await sink.write(event(2))
    await sink.close()
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [1, 2]
    assert records[0]["prev_hash"] == GENESIS
    assert records[1]["prev_hash"] == records[0]["hash"]
    copy = Path(tempfile.mkdtemp()) / "collected.log"
    copy.write_text("\n".join(lines) + "\n")
    assert verify_files([copy]).ok


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(min_size=1, max_size=10), _JSON, max_size=12))
def test_link_line_is_the_canonical_line_of_link(record: dict[str, object]) -> None:
    """The one-pass line equals the canonical form of the linked record, hash included."""
    record.pop("hash", None)
    fast, slow = ChainState("c", 4, "f" * 64), ChainState("c", 4, "f" * 64)
    line = fast.link_line(copy.deepcopy(record))
    assert line == canonical(slow.link(copy.deepcopy(record))) + b"\n"
    assert fast.head == slow.head
