"""`python -m bench.cpu`: the broker's CPU time per request, a figure a busy machine keeps.

Throughput on a shared two-core machine moves with whatever else runs; the CPU time the
broker process itself spends per answered request (user + system, from /proc, over a
measured wrk run after a warm-up) moves much less, so it compares two versions of the code
and two request kinds (the issue's "within 1.5x of issuance's cost") on a busy machine.
It starts a broker exactly as the bench rows do (fresh dev trust domain, bench policy,
durable audit) and loads it with wrk on the JWT-SVID bearer path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.harness import Bench, Options, scratch_bench
from bench.rows.common import PATHS, request_for
from bench.wrk import run_wrk

__all__ = ["cpu_seconds", "main"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc), its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per kind")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--path", action="append", choices=PATHS, help=f"repeatable; default: all of {PATHS}"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also the issuance's floor (bench/floor.py) and the bare endpoint, same request",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: make bench-deps", file=sys.stderr)
        return 2
    try:
        with scratch_bench("broker-cpu-", Options(seconds=args.seconds, warmup=0.0)) as bench:
            print(
                f"broker CPU per answered request (wrk -t1 -c{args.connections}, {args.seconds} s)"
            )
            for path in args.path or PATHS:
                endpoint, body, headers, expected = request_for(bench.domain, path)
                with bench.broker(f"cpu-{path}") as broker:
                    request = (body, headers, expected)
                    url = f"{broker.url}{endpoint}"
                    _measure(bench, path, url, broker.proc.pid, request=request, args=args)
            if args.floor:
                endpoint, body, headers, expected = request_for(bench.domain, "issue")
                for name, start in (("floor", bench.floor), ("bare", bench.bare)):
                    with start() as (base, proc):
                        request = (body, headers, 201)
                        url = f"{base}{endpoint}"
                        _measure(bench, name, url, proc.pid, request=request, args=args)
    except KeyboardInterrupt:
        return 130
    return 0


def _measure(
    bench: Bench,
    name: str,
    url: str,
    pid: int,
    *,
    request: tuple[str, dict[str, str], int],
    args: argparse.Namespace,
) -> None:
    """wrk against `url` after a warm-up; print the CPU time process `pid` spent per answer."""
    body, headers, expected = request
    common: dict[str, Any] = {
        "script_dir": bench.workdir,
        "body": body,
        "headers": headers,
        "connections": args.connections,
        "threads": 1,
    }
    run_wrk(url, seconds=2, **common)  # warm-up
    before = cpu_seconds(pid)
    result = run_wrk(url, seconds=args.seconds, **common)
    used = cpu_seconds(pid) - before
    answered = sum(result.statuses.values())
    wrong = answered - result.statuses.get(str(expected), 0)
    path = url.split("/", 3)[-1]
    print(
        f"  {name:9} /{path:15} {used / max(answered, 1) * 1e6:7.0f} us CPU/request"
        f"  ({answered / result.seconds:,.0f} req/s, {wrong} not {expected})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
