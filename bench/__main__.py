"""`python -m bench` (or `make bench`): every row of issue #10's table, in one run.

Prints the table and writes it into bench/README.md (between the bench markers). See
bench/README.md for the method and `python -m bench --help` for the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import procs, rows, wrk
from bench.domain import bench_policy, init_domain
from bench.harness import Bench, Options, cpu_model, nproc
from bench.model import Result
from bench.registry import ROWS
from bench.report import README, render, write_readme

__all__ = ["main"]
assert rows  # imported for its registrations


def _parser() -> argparse.ArgumentParser:
    cpus = nproc()
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="The broker's benchmark table (issue #10)."
    )
    parser.add_argument(
        "--seconds", type=float, help="measured seconds per row (default 8; 2 with --quick)"
    )
    parser.add_argument(
        "--warmup", type=float, help="warm-up seconds per load (default 1; 0.5 with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 s rows, 10,000 credentials for RSS"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ROW",
        help=f"run only these rows (repeat or comma-separate; a prefix like 'open' works): "
        f"{', '.join(ROWS)}",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop offered req/s")
    parser.add_argument(
        "--connections", type=int, default=32, help="closed-loop connections (wrk and Python)"
    )
    parser.add_argument(
        "--open-connections", type=int, default=64, help="open-loop connections in all"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=min(4, max(2, cpus)),
        help="Python generator processes (default: CPUs, 2 to 4)",
    )
    parser.add_argument(
        "--wrk-threads",
        type=int,
        default=1 if cpus <= 2 else 2,
        help="wrk threads",
    )
    parser.add_argument("--rss-agents", type=int, default=10_000)
    parser.add_argument("--rss-credentials", type=int, default=None, help="default 100,000")
    parser.add_argument(
        "--rss-batch", type=int, default=16, help="tools per request when filling (1 to 16)"
    )
    parser.add_argument("--no-readme", action="store_true", help="do not update bench/README.md")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--note", default="", help="a remark for the header (e.g. 'noisy')")
    return parser


def _selected(only: list[str]) -> list[str]:
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    if not wanted:
        return list(ROWS)
    keys = [k for k in ROWS if any(k == w or k.startswith(w + "-") for w in wanted)]
    unknown = [w for w in wanted if not any(k == w or k.startswith(w + "-") for k in ROWS)]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; rows: {', '.join(ROWS)}")
    return keys


def _has_workers() -> bool:
    out = subprocess.run(
        [procs.tool("broker"), "serve", "--help"], capture_output=True, text=True, check=False
    )
    return "--workers" in out.stdout


def _git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent,
    )
    return out.stdout.strip() or "?"


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_rows(bench: Bench, keys: list[str]) -> None:
    for index, key in enumerate(keys, 1):
        entry = ROWS[key]
        print(f"[{index}/{len(keys)}] {key}: {entry.title}", flush=True)
        started = time.monotonic()
        try:
            produced = entry.run(bench)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one failing row must not hide the others
            traceback.print_exc(file=sys.stderr)
            reason = " ".join(str(exc).split())[:160]
            produced = [Result(key, entry.title, skipped=f"failed: {reason}")]
        took = time.monotonic() - started
        for result in produced:
            result.wall_seconds = took
            bench.results[result.key] = result
            if result.rps is not None:
                assert result.load is not None
                print(
                    f"    {result.key}: {result.rps:,.0f} req/s, p50 "
                    f"{result.load.p50_ms or 0:.2f} ms, p99 {result.load.p99_ms or 0:.2f} ms, "
                    f"unexpected {sum(result.load.unexpected.values())} ({took:.0f} s)",
                    flush=True,
                )
            elif result.value is not None:
                print(f"    {result.key}: {result.value:.0f} {result.unit} ({took:.0f} s)")
            elif result.skipped:
                print(f"    {result.key}: {result.skipped}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    keys = _selected(args.only)
    options = Options(
        seconds=args.seconds or (2.0 if args.quick else 8.0),
        warmup=args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0),
        quick=args.quick,
        rate=args.rate,
        connections=args.connections,
        open_connections=args.open_connections,
        clients=args.clients,
        wrk_threads=args.wrk_threads,
        rss_agents=args.rss_agents,
        rss_credentials=args.rss_credentials or (10_000 if args.quick else 100_000),
        rss_batch=args.rss_batch,
    )
    if wrk.available() is None:
        print("wrk not found: `make bench-deps` (apt-get install -y wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Also when started in the background (where SIGINT arrives ignored): Ctrl-C or kill -INT
    # must reach the `finally` that stops the children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    try:
        domain = init_domain(workdir / "dev")
        policy = workdir / "policy-bench.yaml"
        bench_policy(domain, policy)
        domain.check_policy(policy, domain.config)
        bench = Bench(options, workdir, domain, policy, has_workers=_has_workers())
        _run_rows(bench, keys)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process the bench started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"working directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - started
    header = (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_git_commit()}"
        f"{' (quick smoke run: not a measurement)' if args.quick else ''}: "
        f"nproc {nproc()}, {cpu_model()}, Python {platform.python_version()}, "
        f"{options.seconds:g} s per row (+{options.warmup:g} s warm-up), "
        f"open loop {options.rate:g} req/s, total {total / 60:.1f} min"
        + (f", rows: {', '.join(keys)}" if args.only else "")
        + (f". Note: {args.note}" if args.note else "")
    )
    report = render(bench.results, header)
    print()
    print(report)
    if args.json:
        args.json.write_text(json.dumps(_as_json(bench.results), indent=1))
    if args.only or args.no_readme:
        print(f"\n(bench/README.md not updated: {'--only' if args.only else '--no-readme'})")
    else:
        write_readme(report)
        print(f"\nwritten to {README}")
    return 0


def _as_json(results: dict[str, Result]) -> dict[str, object]:
    """The results with their figures and target verdicts (for before/after comparisons)."""
    out: dict[str, object] = {}
    for key, result in results.items():
        data = dataclasses.asdict(dataclasses.replace(result, targets=[]))
        data["rps"] = result.rps
        data["targets"] = [
            {"text": t.text, "met": t.judge(results) if result.skipped is None else None}
            for t in result.targets
        ]
        out[key] = data
    return out


if __name__ == "__main__":
    raise SystemExit(main())
