"""Issuance throughput over HTTPS with a durable (fsynced) audit trail vs audit to /dev/null.

The broker (`broker serve`, embedded SQLite state, the development trust domain) and the
load generator run as separate processes; the two audit configurations alternate, and
each figure is the median of its rounds, so both are measured under the same conditions
in the same run. Target: the durable audit costs at most 20% of throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from broker.clock import SystemClock
from broker.dev.trust_domain import DevTrustDomain, init_trust_domain


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(td: DevTrustDomain, name: str, port: int, *, durable: bool) -> Path:
    data = yaml.safe_load(td.config.read_text())
    data["listen"]["port"] = port
    data["log_level"] = "warning"
    data["state"]["path"] = f"state-{name}.db"
    if durable:
        data["audit"]["path"] = f"audit-{name}.log"
        data["audit"]["fsync"] = True
    else:
        data["audit"] = {"sink": "file", "path": "/dev/null", "fsync": False}
    path = td.root / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _wait_ready(url: str, ca: Path, proc: subprocess.Popen[bytes]) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("broker exited during start-up")
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("broker not ready")


def _round(
    td: DevTrustDomain, name: str, *, durable: bool, seconds: float, connections: int
) -> dict[str, float]:
    port = _free_port()
    config = _config(td, name, port, durable=durable)
    url = f"https://127.0.0.1:{port}"
    broker = subprocess.Popen([sys.executable, "-m", "broker", "serve", "--config", str(config)])
    try:
        _wait_ready(url, td.ca_bundle, broker)
        agent = td.agent_dir("analytics")
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.load",
                "--url",
                f"{url}/v1/credentials",
                "--ca",
                str(td.ca_bundle),
                "--cert",
                str(agent / "svid.pem"),
                "--key",
                str(agent / "key.pem"),
                "--seconds",
                str(seconds),
                "--connections",
                str(connections),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]
    finally:
        os.kill(broker.pid, signal.SIGTERM)
        broker.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.issuance")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {"null": [], "durable": []}
    with tempfile.TemporaryDirectory() as tmp:
        td, _ = init_trust_domain(Path(tmp) / "dev", None, SystemClock())
        for index in range(args.rounds):
            for name, durable in (("null", False), ("durable", True)):
                results[name].append(
                    _round(
                        td,
                        f"{name}{index}",
                        durable=durable,
                        seconds=args.seconds,
                        connections=args.connections,
                    )
                )
        audit_lines = sum(
            len(p.read_text().splitlines()) for p in (td.root).glob("audit-durable*.log")
        )
    summary = {
        name: {
            key: statistics.median(r[key] for r in rounds) for key in ("rps", "p50_ms", "p99_ms")
        }
        for name, rounds in results.items()
    }
    errors = sum(r["errors"] for rounds in results.values() for r in rounds)
    null, durable = summary["null"], summary["durable"]
    cost = (1 - durable["rps"] / null["rps"]) * 100
    print(
        f"issuance over HTTPS: {args.connections} mTLS connections, "
        f"{args.rounds} x {args.seconds:.0f} s per configuration, medians"
    )
    for label, row, note in (
        ("audit to /dev/null", null, "(baseline)"),
        ("audit fsynced", durable, f"({cost:+.1f}% cost; target <= 20%)"),
    ):
        print(
            f"  {label:<20} {row['rps']:7.0f} credentials/s   p50 {row['p50_ms']:5.1f} ms   "
            f"p99 {row['p99_ms']:5.1f} ms   {note}"
        )
    print(f"  records written durably: {audit_lines}; non-201 responses: {errors}")


if __name__ == "__main__":
    main()
