"""`broker serve --workers N`: N processes on one listening port (SO_REUSEPORT).

Each worker is a whole broker process (`broker serve` with a hidden worker index): it
binds the same port with SO_REUSEPORT (the kernel spreads connections), writes its own
audit chain (`audit.log` becomes `audit.w0.log`, `audit.w1.log`, ...; chain id
`<id>-w<N>`), and shares everything else through the configured state store (SQLite
across the processes of one host, Redis across pods) and the signing key file. Worker 0
alone serves the plain-HTTP metrics port; `/metrics` gathers every worker's samples
(`broker/web/worker_metrics.py`).

The parent only supervises: it forwards SIGTERM, SIGINT and SIGHUP to every worker, and
when one worker dies unexpectedly it stops the others and exits 1, so that the
orchestrator restarts the whole set (a half-dead broker is worse than a restart).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import structlog

from broker.config.settings import Settings
from broker.errors import ConfigError

__all__ = ["for_worker", "run_workers", "worker_audit_path"]

log = structlog.get_logger(__name__)

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_STOPPING = (signal.SIGTERM, signal.SIGINT)


def worker_audit_path(path: Path, index: int) -> Path:
    """`audit.log` -> `audit.w<index>.log` (the file of one worker's chain)."""
    return path.with_name(f"{path.stem}.w{index}{path.suffix}")


def for_worker(settings: Settings, index: int, count: int) -> Settings:
    """The settings of worker `index` of `count`.

    Raises:
        ConfigError: A setting that several processes cannot share.
    """
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"worker index {index} is out of range for {count} workers")
    settings = dataclasses.replace(settings, workers=count, worker_index=index)
    if count == 1:
        return settings
    if settings.listen.port == 0:
        raise ConfigError(f"{settings.source_file}: listen.port: --workers needs a fixed port")
    if settings.gateway is not None and settings.gateway.port == 0:
        # Every worker binds the gateway's port too (SO_REUSEPORT): it must be one port.
        raise ConfigError(f"{settings.source_file}: gateway.port: --workers needs a fixed port")
    audit = settings.audit
    chain_id = audit.chain_id or os.environ.get("HOSTNAME") or socket.gethostname()
    audit = dataclasses.replace(
        audit,
        chain_id=f"{chain_id}-w{index}",
        path=worker_audit_path(audit.path, index) if audit.path is not None else None,
    )
    return dataclasses.replace(
        settings,
        audit=audit,
        metrics=settings.metrics if index == 0 else None,
    )


def run_workers(config: Path, count: int) -> int:
    """Start `count` workers and supervise them until they stop.

    Returns:
        0 when every worker stopped cleanly, else 1.
    """
    children = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [
                sys.executable,
                "-m",
                "broker",
                "serve",
                "--config",
                str(config),
                "--workers",
                str(count),
                "--worker-index",
                str(index),
            ]
        )
        for index in range(count)
    ]
    stopping = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        failed = _supervise(children, stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def _supervise(children: list[subprocess.Popen[bytes]], stopping: threading.Event) -> bool:
    """Wait for every child; if one dies while not stopping, stop the rest."""
    failed = False
    remaining = list(children)
    while remaining:
        for child in list(remaining):
            try:
                code = child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            remaining.remove(child)
            # A worker still starting when the stop signal came has no handler yet: the
            # signal itself ends it (code -SIGTERM). That is the stop asked for, not a failure.
            clean = code == 0 or (stopping.is_set() and -code in _STOPPING)
            if not clean or not stopping.is_set():
                failed = True
                if not stopping.is_set():
                    log.error("a worker stopped unexpectedly; stopping the others", code=code)
                    stopping.set()
                    for other in remaining:
                        other.send_signal(signal.SIGTERM)
    return failed
