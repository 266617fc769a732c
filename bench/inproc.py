"""`python -m bench.inproc`: the pipeline's own cost per request, without HTTP or TLS.

Opens a real runtime (the bench's dev trust domain and policy, durable audit, SQLite
state) in this process and drives `Pipeline.authenticate` + `issue`/`exchange` directly,
`--concurrency` requests at a time (as connections would), for each request kind of
`bench.rows.common.PATHS`. Reported per request: the process's CPU time (the audit
writer's thread included) and the wall time, each the best of `--repeat` rounds, which
keeps the figure steady on a shared machine. `--profile` prints cProfile's top functions
of one more round instead. What HTTP, TLS and aiohttp add is the issuance row minus this.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qsl

from bench import procs
from bench.domain import bench_policy, broker_config, init_domain
from bench.rows.common import PATHS, request_for
from broker.authn.authenticator import Presented
from broker.config.settings import load_settings
from broker.context.requests import CredentialRequest, ExchangeRequest
from broker.domain import Secret
from broker.errors import PolicyDenied
from broker.runtime import Runtime, open_runtime

__all__ = ["main"]

Call = Callable[[int], Awaitable[None]]


def _call(runtime: Runtime, path: str, body: str, headers: dict[str, str]) -> Call:
    pipeline = runtime.pipeline
    presented = Presented(authorization=headers["Authorization"])

    async def issue(i: int) -> None:
        caller = await pipeline.authenticate(presented, request_id=f"r{i}", remote=None)
        tools = tuple(json.loads(body)["tools"])
        try:
            await pipeline.issue(
                caller, CredentialRequest(tools=tools), request_id=f"r{i}", remote=None
            )
        except PolicyDenied:
            if path != "deny":
                raise

    async def exchange(i: int) -> None:
        caller = await pipeline.authenticate(presented, request_id=f"r{i}", remote=None)
        form = dict(parse_qsl(body))
        request = ExchangeRequest(
            subject_token=Secret(form["subject_token"]), tool=form["audience"]
        )
        await pipeline.exchange(caller, request, request_id=f"r{i}", remote=None)

    return exchange if path == "exchange" else issue


async def _round(call: Call, requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for `requests` calls, `concurrency` at a time."""
    queue = iter(range(requests))

    async def worker() -> None:
        for i in queue:
            await call(i)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def _measure(config: Path, path: str, domain: object, args: argparse.Namespace) -> str:
    _, body, headers, _ = request_for(domain, path)  # type: ignore[arg-type]
    async with open_runtime(load_settings(config)) as runtime:
        call = _call(runtime, path, body, headers)
        await _round(call, 200, args.concurrency)  # warm-up: caches, JIT-free paths, pages
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await _round(call, args.requests, args.concurrency)
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(args.profile)
            return ""
        rounds = [await _round(call, args.requests, args.concurrency) for _ in range(args.repeat)]
        stages = _stage_means(runtime)
    cpu = min(r[0] for r in rounds) / args.requests * 1e6
    wall = min(r[1] for r in rounds) / args.requests * 1e6
    return f"  {path:9} {cpu:6.0f} us CPU  {wall:6.0f} us wall  ({1e6 / wall:,.0f}/s)  {stages}"


def _stage_means(runtime: Runtime) -> str:
    """Mean time inside each pipeline step (`broker_stage_duration_seconds`), warm-up included.

    A step's time includes its awaits (the audit step waits for the group commit).
    """
    means = []
    for family in runtime.pipeline.metrics.stages.collect():
        counts = {s.labels["stage"]: s.value for s in family.samples if s.name.endswith("_count")}
        sums = {s.labels["stage"]: s.value for s in family.samples if s.name.endswith("_sum")}
        means = [f"{stage} {sums[stage] / n * 1e6:.0f}" for stage, n in counts.items() if n]
    return "steps (us): " + ", ".join(means)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best is reported")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--profile", type=int, metavar="TOP", help="cProfile's top TOP instead")
    parser.add_argument(
        "--path", action="append", choices=PATHS, help=f"repeatable; default: all of {PATHS}"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="broker-inproc-"))
    try:
        domain = init_domain(workdir / "dev")
        policy = workdir / "policy-bench.yaml"
        bench_policy(domain, policy)
        print(
            f"pipeline per request, in-process (no HTTP/TLS), {args.concurrency} concurrent, "
            f"best of {args.repeat} x {args.requests:,}"
        )
        for path in args.path or PATHS:
            out = workdir / f"inproc-{path}"
            out.mkdir()
            config, _ = broker_config(domain, out, port=procs.free_port(), policy=policy)
            line = asyncio.run(_measure(config, path, domain, args))
            if line:
                print(line, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
