"""Real servers for tests, started as processes on free loopback ports and stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.broker import free_port


@dataclass
class RedisServer:
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _stop(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A throw-away redis-server (no persistence), stopped by PID."""
    binary = shutil.which("redis-server")
    if binary is None:  # `make test` installs it; a bare pytest run must say why
        raise RuntimeError("redis-server is not installed: run `make test` (it installs it)")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    pidfile = directory / "redis.pid"
    subprocess.run(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
            "--pidfile",
            str(pidfile),
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(directory / "redis.log"),
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"redis-server did not start: {(directory / 'redis.log').read_text()}"
            )
        time.sleep(0.02)
    pid = int(pidfile.read_text())
    try:
        yield RedisServer(port, pid)
    finally:
        _stop(pid)
