"""The run's shared context: options, the dev trust domain, servers, load generators.

Rows (bench/rows/) receive one `Bench` and use its helpers, so that every row starts its
servers the same way (free loopback port, own session, stopped by PID on the way out),
loads them the same way, and counts statuses and audit records the same way.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.client import Spec
from bench.domain import DevDomain, broker_config
from bench.model import Check, Load, Result, percentile
from bench.wrk import run_wrk

__all__ = ["Bench", "Options", "RunningBroker"]

_ISSUED = re.compile(rb'"event"\s*:\s*"credential\.issued"')
_DENIED = re.compile(rb'"event"\s*:\s*"credential\.denied"')


@dataclass(frozen=True, slots=True)
class Options:
    """Command-line options of a run."""

    seconds: float = 8.0
    warmup: float = 1.0
    quick: bool = False
    rate: float = 1000.0
    connections: int = 32
    open_connections: int = 64
    clients: int = 2
    wrk_threads: int = 1
    rss_agents: int = 10_000
    rss_credentials: int = 100_000
    rss_batch: int = 16


@dataclass(frozen=True, slots=True)
class RunningBroker:
    """A `broker serve` started for one row."""

    name: str
    url: str
    port: int
    proc: procs.Proc
    audit: Path | None
    config: Path


@dataclass
class Bench:
    """The run: options, working directory, trust domain, results so far."""

    options: Options
    workdir: Path
    domain: DevDomain
    policy: Path
    results: dict[str, Result] = field(default_factory=dict)
    has_workers: bool = False

    # ---------------------------------------------------------------- servers

    @contextmanager
    def broker(
        self,
        name: str,
        *,
        policy: Path | None = None,
        workers: int | None = None,
        durable_audit: bool = True,
        fill_tools: list[str] | None = None,
        ready_timeout: float = 60.0,
        gateway: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> Iterator[RunningBroker]:
        """`broker serve --config COPY [--workers N]` on a free port, ready, then stopped.

        Args:
            name: Names its directory (state, audit log, process log).
            policy: Policy file (default: the bench policy).
            workers: Passed as `--workers N` when given.
            durable_audit: False sends the audit to /dev/null without fsync.
            fill_tools: Extra tools for the RSS row's fill (cloned from analytics_api).
            ready_timeout: Seconds to wait for /readyz (a big policy loads slowly).
            gateway: A `gateway:` section to add (the gateway row).
            env: Extra environment for the broker (`BROKER_EVENT_LOOP=asyncio`).

        Yields:
            The running broker.
        """
        out_dir = self.workdir / f"broker-{name}"
        out_dir.mkdir(parents=True, exist_ok=True)
        port = procs.free_port()
        config, audit = broker_config(
            self.domain,
            out_dir,
            port=port,
            policy=policy or self.policy,
            durable_audit=durable_audit,
            fill_tools=fill_tools,
            gateway=gateway,
        )
        argv = [procs.tool("broker"), "serve", "--config", str(config)]
        if workers is not None:
            argv += ["--workers", str(workers)]
        proc = procs.spawn(f"broker ({name})", argv, log=out_dir / "broker.log", env=env)
        try:
            url = f"https://127.0.0.1:{port}"
            procs.wait_http(f"{url}/readyz", ca=self.domain.ca, proc=proc, timeout=ready_timeout)
            yield RunningBroker(name, url, port, proc, audit, config)
        finally:
            code = procs.stop(proc)
            if code not in {0, None, -15}:
                # The working directory is removed after the run: show the cause now.
                tail = textwrap.indent(proc.tail(), "    | ")
                print(f"  note: broker ({name}) exited with {code}; the end of its log:\n{tail}")

    @contextmanager
    def bare(self) -> Iterator[tuple[str, procs.Proc]]:
        """The bare aiohttp endpoint (bench/bare.py), ready; yields its URL and process."""
        with self.module_server("bare endpoint", "bench.bare") as server:
            yield server

    @contextmanager
    def floor(self) -> Iterator[tuple[str, procs.Proc]]:
        """The design's floor (bench/floor.py), ready; yields its URL and process."""
        workdir = str(self.workdir / "floor")  # its audit file and SQLite database
        with self.module_server("floor endpoint", "bench.floor", "--workdir", workdir) as server:
            yield server

    @contextmanager
    def module_server(
        self, name: str, module: str, *extra: str
    ) -> Iterator[tuple[str, procs.Proc]]:
        """`python -m MODULE --port P --dir DOMAIN [EXTRA]`, ready; yields its URL and process."""
        port = procs.free_port()
        argv = [sys.executable, "-m", module, "--port", str(port), "--dir", str(self.domain.root)]
        proc = procs.spawn(name, [*argv, *extra], log=self.workdir / f"{module}.log")
        try:
            url = f"https://127.0.0.1:{port}"
            procs.wait_http(f"{url}/readyz", ca=self.domain.ca, proc=proc)
            yield url, proc
        finally:
            procs.stop(proc)

    # ---------------------------------------------------------------- loads

    def wrk(
        self,
        url: str,
        *,
        body: str,
        headers: dict[str, str],
        expected: int,
        seconds: float | None = None,
    ) -> Load:
        """Closed-loop wrk load: a short warm-up run, then the measured run."""
        opts = self.options
        seconds = seconds or opts.seconds
        common: dict[str, Any] = {
            "script_dir": self.workdir,
            "body": body,
            "headers": headers,
            "connections": opts.connections,
            "threads": opts.wrk_threads,
        }
        seen: Counter[str] = Counter()
        if opts.warmup > 0:
            warm = run_wrk(url, seconds=opts.warmup, **common)
            seen.update(warm.statuses)
        result = run_wrk(url, seconds=seconds, **common)
        seen.update(result.statuses)
        return Load(
            generator=result.command,
            seconds=result.seconds,
            expected=expected,
            statuses=result.statuses,
            errors=result.errors,
            seen=dict(seen),
            p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
        )

    def clients(
        self,
        url: str,
        *,
        expected: int,
        body: str,
        headers: dict[str, str] | None = None,
        cert: tuple[Path, Path] | None = None,
        mode: str = "closed",
        rate: float = 0.0,
        connections: int | None = None,
        seconds: float | None = None,
        requests: int = 0,
    ) -> Load:
        """Python generator processes (bench/client.py), results merged.

        Args:
            url: Target URL (https://127.0.0.1:PORT/path).
            expected: The status every response should have.
            body: Request body (JSON).
            headers: Extra request headers.
            cert: Client certificate and key (mTLS), if any.
            mode: `closed` (as fast as answers come) or `open` (fixed schedule).
            rate: Open loop: total offered requests per second.
            connections: Total keep-alive connections over all processes.
            seconds: Measured window.
            requests: Closed loop: stop after this many requests in all (0: time-bound).

        Returns:
            The merged load.
        """
        opts = self.options
        seconds = seconds or opts.seconds
        processes = max(1, opts.clients)
        total = connections or (opts.open_connections if mode == "open" else opts.connections)
        per_process = max(1, math.ceil(total / processes))
        host_port, _, path = url.removeprefix("https://").partition("/")
        host, _, port = host_port.partition(":")
        setup = 2.5 if not opts.quick else 1.5
        start_at = time.time() + setup + (opts.warmup if mode == "closed" else 0.0)
        warmup = opts.warmup
        specs = [
            Spec(
                host=host,
                port=int(port),
                path="/" + path,
                ca=str(self.domain.ca),
                body=body,
                headers={"Content-Type": "application/json", **(headers or {})},
                cert=str(cert[0]) if cert else None,
                key=str(cert[1]) if cert else None,
                mode=mode,
                connections=per_process,
                rate=rate / processes,
                # Interleave the processes' schedules: together they send evenly.
                phase=index / rate if rate else 0.0,
                start_at=start_at + (warmup if mode == "open" else 0.0),
                warmup=warmup if mode == "open" else 0.0,
                seconds=seconds,
                drain=min(10.0, max(2.0, seconds)),
                requests=math.ceil(requests / processes) if requests else 0,
            )
            for index in range(processes)
        ]
        children = [
            procs.spawn(
                f"load generator {i}",
                [sys.executable, "-m", "bench.client", json.dumps(asdict(spec))],
                stdout=subprocess.PIPE,
                log=self.workdir / f"client-{i}.log",
            )
            for i, spec in enumerate(specs)
        ]
        outputs: list[dict[str, Any]] = []
        limit = setup + warmup + seconds + 60
        try:
            for child in children:
                stdout, _ = child.popen.communicate(timeout=limit)
                if child.popen.returncode != 0 or not stdout:
                    raise RuntimeError(
                        f"{child.name} failed ({child.popen.returncode}):\n{child.tail()}"
                    )
                outputs.append(json.loads(stdout))
        finally:
            for child in children:
                procs.stop(child, grace=2)
        return _merge(
            outputs,
            expected=expected,
            generator=(
                f"py {processes}x{per_process} {'mTLS' if cert else 'bearer'}"
                + (f", open {rate:g}/s" if mode == "open" else "")
            ),
            offered=rate if mode == "open" else None,
            fill=requests > 0,
        )

    # ---------------------------------------------------------------- checks

    def audit_check(self, broker: RunningBroker, *, issued: int = 0, denied: int = 0) -> Check:
        """Nothing lost: the audit log holds at least as many records as answers were seen.

        Every 201 (and token-exchange 200) must have a `credential.issued` record and every
        403 a `credential.denied` one, written before the answer left the broker.
        """
        if broker.audit is None:
            return Check("audit", ok=True, detail="audit to /dev/null: not counted")
        counts = count_audit(broker.audit)
        ok = counts["issued"] >= issued and counts["denied"] >= denied
        parts = []
        if issued:
            parts.append(f"issued records {counts['issued']} >= {issued} seen")
        if denied:
            parts.append(f"denied records {counts['denied']} >= {denied} seen")
        return Check("audit", ok=ok, detail="; ".join(parts) or "no answers to count")

    def rss_note(self, broker: RunningBroker) -> str:
        try:
            rss = procs.read_rss_kib(broker.proc.pid)
        except OSError:
            return "broker RSS: n/a"
        return f"broker RSS after the row {rss.get('VmRSS', 0) / 1024:.0f} MB"


def count_audit(path: Path) -> dict[str, int]:
    """`credential.issued` / `credential.denied` records in an audit log and its siblings.

    The broker's directory is its own, so every `audit*` file in it counts: the log, its
    size rotations (`audit.log.<time>-<seq>`) and any per-worker files a multi-process
    broker may write; the `.head` sidecars hold no records.
    """
    counts = {"issued": 0, "denied": 0}
    for file in sorted(path.parent.glob(path.stem + "*")):
        if not file.is_file() or file.name.endswith(".head"):
            continue
        data = file.read_bytes()
        counts["issued"] += len(_ISSUED.findall(data))
        counts["denied"] += len(_DENIED.findall(data))
    return counts


def _merge(
    outputs: list[dict[str, Any]],
    *,
    expected: int,
    generator: str,
    offered: float | None,
    fill: bool = False,
) -> Load:
    window: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[int] = []
    late = 0.0
    completed = 0
    for out in outputs:
        completed += out["completed"]
        window.update(out["window"])
        seen.update(out["seen"])
        errors.update(out["errors"])
        latencies.extend(out["latencies_us"])
        late = max(late, out["late_max_ms"])
        if out["late_start_ms"] > 0 and not fill:
            errors["generator_started_late"] += 1
    latencies.sort()
    p50 = percentile(latencies, 50)
    p99 = percentile(latencies, 99)
    return Load(
        generator=generator,
        seconds=outputs[0]["seconds"],
        expected=expected,
        statuses=dict(window),
        errors=dict(errors),
        seen=dict(seen),
        p50_ms=p50 / 1000 if p50 is not None else None,
        p99_ms=p99 / 1000 if p99 is not None else None,
        offered=offered,
        late_max_ms=late if offered else None,
        completed=completed,
    )


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def nproc() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


@contextmanager
def scratch_bench(prefix: str, options: Options) -> Iterator[Bench]:
    """A throw-away bench for the single-purpose tools (profile, cpu): a fresh dev trust
    domain and the bench policy in a temporary directory, every process stopped and the
    directory removed afterwards."""
    from bench.domain import bench_policy, init_domain  # noqa: PLC0415 - tools only

    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        domain = init_domain(workdir / "dev")
        policy = workdir / "policy-bench.yaml"
        bench_policy(domain, policy)
        yield Bench(options, workdir, domain, policy)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
