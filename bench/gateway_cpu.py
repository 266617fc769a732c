"""`python -m bench.gateway_cpu`: the gateway's CPU time per proxied request, and a profile.

Sets up exactly what the gateway row does (bench/rows/gateway.py: the bare endpoint as the
upstream, a broker with one gateway route to it, the agent's X.509-SVID and a credential
bound to it) and loads the gateway with the Python generator, closed loop. Prints the CPU
time (user + system, from /proc) the broker process spent per answered request, and the
upstream's own per request as the reference: on a shared machine these move much less than
throughput, so they compare two versions of the code (the best of several `--rounds` is
the steadiest figure). `--profile` samples the broker with py-spy during the last round
and prints its top frames (as `python -m bench.profile`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import procs
from bench.cpu import cpu_seconds
from bench.domain import bench_policy, init_domain
from bench.harness import Bench, Options
from bench.model import Load
from bench.profile import py_spy, summarize
from bench.rows.gateway import BODY, gateway_section, ready_gateway

__all__ = ["main"]


def _tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its live children (`--workers`: the workers do the work)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += _tree_cpu(int(child))
    return total


def _switches(pid: int) -> int:
    """Voluntary context switches of `pid`'s threads so far: each one a wait that slept.

    Exited threads' counts are lost, but the broker's threads live as long as it does.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def _pid_of(*argv: str) -> int:
    """The PID of the process whose command line contains `argv` in order."""
    wanted = "\0".join(argv).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise LookupError(" ".join(argv))


def _spy(spy: str, pid: int, args: argparse.Namespace, out: Path) -> procs.Proc:
    """py-spy sampling `pid` for `args.seconds`, only where the GIL is held."""
    argv = [spy, "record", "-p", str(pid), "-d", str(max(1, round(args.seconds)))]
    argv += ["-r", str(args.rate), "-f", "raw", "-t", "--gil", "-o", str(out)]
    if args.workers:
        argv.append("-s")
    return procs.spawn("py-spy", argv, log=out.with_suffix(".log"))


def _measure(broker: int, upstream: int, run: Callable[[], Load]) -> tuple[float, str]:
    """One measured load: CPU per answered request of the broker and of the upstream."""
    before = _tree_cpu(broker), cpu_seconds(upstream)
    slept = _switches(broker)
    load = run()
    after = _tree_cpu(broker), cpu_seconds(upstream)
    slept = _switches(broker) - slept
    answered = sum(v for k, v in load.seen.items() if k.isdigit())
    ours, theirs = ((a - b) / max(answered, 1) * 1e6 for a, b in zip(after, before, strict=True))
    return ours, (
        f"gateway: {ours:6.0f} us CPU/request (broker), upstream {theirs:4.0f} us"
        f" (x{ours / max(theirs, 1):.2f}); {slept / max(answered, 1):.1f} sleeps/request"
        " (the broker's threads);"
        f" {load.rps:,.0f} req/s, p50 {load.p50_ms or 0:.2f} ms, p99 {load.p99_ms or 0:.2f} ms,"
        f" {answered} answered,"
        f" {answered - load.seen.get('201', 0)} not 201, errors {load.errors or 0}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_cpu", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=1, help="measured runs (same processes)")
    parser.add_argument("--clients", type=int, default=2, help="generator processes")
    parser.add_argument("--workers", type=int, help="broker serve --workers N")
    parser.add_argument(
        "--open", type=float, metavar="RATE", help="open loop at RATE req/s (default: closed)"
    )
    parser.add_argument("--null-audit", action="store_true", help="audit to /dev/null, no fsync")
    parser.add_argument("--profile", action="store_true", help="py-spy the broker (last round)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw output here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    spy = py_spy() if args.profile else None
    if args.profile and spy is None:
        print("py-spy not found: .venv/bin/pip install py-spy (make bench does)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="broker-gwcpu-"))
    try:
        domain = init_domain(workdir / "dev")
        policy = workdir / "policy-bench.yaml"
        bench_policy(domain, policy)
        options = Options(seconds=args.seconds, warmup=1.0, clients=args.clients)
        bench = Bench(options, workdir, domain, policy)
        cert = domain.agent_cert("analytics")
        with bench.bare() as (upstream, _):
            port = procs.free_port()
            section = gateway_section(bench, upstream, port)
            upstream_pid = _pid_of("bench.bare", "--port", upstream.rsplit(":", 1)[1])
            with bench.broker(
                "gwcpu", gateway=section, workers=args.workers, durable_audit=not args.null_audit
            ) as broker:
                url, auth = ready_gateway(bench, broker.url, port)

                def run() -> Load:
                    mode = {"mode": "open", "rate": args.open} if args.open else {}
                    return bench.clients(
                        url, expected=201, body=BODY, headers=auth, cert=cert, **mode
                    )

                print("warm-up " + _measure(broker.proc.pid, upstream_pid, run)[1], flush=True)
                raw_file = workdir / "profile.raw"
                best = float("inf")
                for round_ in range(args.rounds):
                    last = round_ == args.rounds - 1
                    sampler = _spy(spy, broker.proc.pid, args, raw_file) if spy and last else None
                    cpu, line = _measure(broker.proc.pid, upstream_pid, run)
                    best = min(best, cpu)
                    print(line, flush=True)
                    if sampler is not None:
                        sampler.popen.wait(timeout=args.seconds + 60)
                        procs.stop(sampler)
                        raw = raw_file.read_text() if raw_file.exists() else ""
                        if args.raw is not None:
                            args.raw.write_text(raw)
                        print(summarize(raw, top=args.top))
                print(f"best of {args.rounds}: {best:.0f} us CPU/request (broker)")
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
