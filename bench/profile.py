"""`python -m bench.profile`: where the broker spends its time under JWT-SVID load.

Starts a broker exactly as the issuance row does (fresh dev trust domain, bench policy,
durable audit), loads it with wrk on the JWT-SVID bearer path, and meanwhile samples it
with `py-spy record -f raw` (threads shown, frames aggregated per function). Prints the
top frames by own time (the leaf of each sample: where the CPU actually was) and by
inclusive time, and the samples per thread (event loop vs executor threads).

py-spy is a bench-only tool: `make bench` installs it into the virtualenv
(`pip install py-spy`); it needs ptrace rights on the broker (root, or
kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import procs
from bench.harness import Bench, Options, scratch_bench
from bench.rows.common import PATHS, request_for

__all__ = ["main", "py_spy", "summarize"]

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def summarize(raw: str, *, top: int = 15) -> str:
    """Top frames by own and inclusive samples, and samples per thread, from py-spy raw output.

    Args:
        raw: py-spy's `-f raw` output (collapsed stacks: `frame;frame;... count`).
        top: How many frames to list.

    Returns:
        The printable summary.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        count = int(match["count"])
        frames = match["stack"].split(";")
        if frames and frames[0].startswith(("thread (", "process ")):
            threads[frames[0]] += count
            frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return "no samples (was the broker busy? did py-spy have ptrace rights?)"
    out = [f"{total} samples"]
    if threads:
        out.append("samples per thread:")
        out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common(8)]
    out.append(f"top {top} frames by own time (where the CPU was):")
    out += [f"  {100 * n / total:5.1f}%  {n:6d}  {frame}" for frame, n in own.most_common(top)]
    out.append(f"top {top} frames by inclusive time:")
    out += [
        f"  {100 * n / total:5.1f}%  {n:6d}  {frame}" for frame, n in inclusive.most_common(top)
    ]
    return "\n".join(out)


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="profiled seconds")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw output here")
    parser.add_argument("--workers", type=int, help="broker serve --workers N (if supported)")
    parser.add_argument(
        "--gil", action="store_true", help="only samples holding the GIL (where Python CPU goes)"
    )
    parser.add_argument(
        "--path",
        choices=PATHS,
        default="issue",
        help="which request (bench.rows.common.request_for)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="profile the issuance's floor (bench/floor.py) instead of the broker",
    )
    args = parser.parse_args(argv)
    spy = py_spy()
    if spy is None:
        print("py-spy not found: .venv/bin/pip install py-spy (make bench does)", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk not found: make bench-deps", file=sys.stderr)
        return 2
    try:
        with scratch_bench("broker-profile-", Options(seconds=args.seconds, warmup=0.0)) as bench:
            code = _profile(bench, spy, args)
    except KeyboardInterrupt:
        return 130
    return code


def _profile(bench: Bench, spy: str, args: argparse.Namespace) -> int:
    """Load the broker with wrk while py-spy samples it; print the summary."""
    workdir = bench.workdir
    endpoint, body, headers, expected = request_for(bench.domain, args.path)
    raw_file = workdir / "profile.raw"
    with _target(bench, args) as (url, pid):
        argv_spy = [
            spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, round(args.seconds))),
            "-r",
            str(args.rate),
            "-f",
            "raw",
            "-F",
            "-t",
            "-o",
            str(raw_file),
        ]
        if args.workers:
            argv_spy.append("-s")
        if args.gil:
            argv_spy.append("--gil")
        sampler = procs.spawn("py-spy", argv_spy, log=workdir / "py-spy.log")
        try:
            load = bench.wrk(f"{url}{endpoint}", body=body, headers=headers, expected=expected)
            code = sampler.popen.wait(timeout=args.seconds + 60)
        finally:
            procs.stop(sampler)
    if code != 0 or not raw_file.exists():
        print(f"py-spy failed ({code}):\n{sampler.tail()}", file=sys.stderr)
        return 1
    raw = raw_file.read_text()
    if args.raw is not None:
        args.raw.write_text(raw)
    target = "the floor" if args.floor else "broker"
    print(
        f"{target} under wrk JWT-SVID {endpoint} ({load.generator}): {load.rps:,.0f} req/s while "
        f"sampled at {args.rate}/s, {sum(load.unexpected.values())} unexpected answers"
    )
    print(summarize(raw, top=args.top))
    return 0


@contextmanager
def _target(bench: Bench, args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """The process to profile, started: its base URL and PID."""
    if args.floor:
        with bench.floor() as (url, proc):
            yield url, proc.pid
    else:
        with bench.broker("profile", workers=args.workers) as broker:
            yield broker.url, broker.proc.pid


if __name__ == "__main__":
    raise SystemExit(main())
