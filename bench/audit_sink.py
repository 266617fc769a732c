"""`python -m bench.audit_sink`: what one durable audit record costs, by batch size.

Drives a real `FileAuditSink` (a fresh file, fsync on unless `--no-fsync`) in this
process with `--concurrency` writers, each awaiting its record the way a request does
before it answers, so that every group-commit batch holds that many records. Reported
per record: the process's CPU time (the writer thread and the kernel's fsync work
included) and the records per batch, best of `--repeat` rounds. Batch size 1 is the
cost at a low request rate, where every request pays for its own batch (the loop
turns, the writer thread's hop, the fsync); a large batch shows what building, linking
and hashing a record costs alone. The record is a `gateway.forwarding` record of the
size the gateway writes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from broker.audit.events import AuditEvent, gateway_request
from broker.audit.file import FileAuditSink
from broker.clock import SystemClock
from broker.domain import UserRef

__all__ = ["main"]


def _event(i: int) -> AuditEvent:
    return gateway_request(
        event="gateway.forwarding",
        ts=datetime.now(UTC),
        request_id=f"request-{i:016d}",
        remote="127.0.0.1",
        agent="spiffe://example.org/agent/analytics",
        user=UserRef("https://idp.example.org", "alice"),
        delegation_chain=(),
        tool="analytics_api",
        decision="allow",
        reasons=(),
        details={
            "route": "demo",
            "method": "POST",
            "path": "/v1/chat/completions",
            "status": None,
            "bytes_in": 120,
            "bytes_out": 0,
            "latency_us": 1234,
        },
    )


async def _round(
    directory: Path, concurrency: int, records: int, *, fsync: bool
) -> tuple[float, float]:
    """One round: CPU µs per record and records per batch."""
    sink = FileAuditSink(directory / "audit.jsonl", SystemClock(), chain_id="bench", fsync=fsync)
    await sink.start()
    each = max(1, records // concurrency)

    async def writer() -> None:
        for i in range(each):
            await sink.write(_event(i))

    try:
        started = time.process_time()
        await asyncio.gather(*(writer() for _ in range(concurrency)))
        cpu = time.process_time() - started
    finally:
        await sink.close()
    written = each * concurrency
    return cpu / written * 1e6, written / max(sink.batches, 1)


def main(argv: list[str] | None = None) -> int:
    """Print the CPU per durable record at each concurrency."""
    parser = argparse.ArgumentParser(prog="python -m bench.audit_sink", description=__doc__)
    parser.add_argument(
        "--concurrency", type=int, action="append", help="repeatable; default 1, 4, 32"
    )
    parser.add_argument("--records", type=int, default=4000, help="records per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is reported")
    parser.add_argument("--no-fsync", action="store_true", help="write without fsync")
    args = parser.parse_args(argv)
    fsync = not args.no_fsync
    print(
        f"durable audit record ({'fsync' if fsync else 'no fsync'}), CPU per record, "
        f"best of {args.repeat} rounds of {args.records:,}"
    )
    for concurrency in args.concurrency or [1, 4, 32]:
        best: tuple[float, float] | None = None
        for _ in range(args.repeat):
            directory = Path(tempfile.mkdtemp(prefix="bench-audit-"))
            try:
                result = asyncio.run(_round(directory, concurrency, args.records, fsync=fsync))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            if best is None or result[0] < best[0]:
                best = result
        assert best is not None
        print(
            f"  {concurrency:3d} writers  {best[0]:7.1f} us CPU/record  "
            f"({best[1]:.1f} records per batch)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
