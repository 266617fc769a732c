"""Shared fixtures: run-time trust domains, the local Workload API, the manual clock."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.logging import configure_logging
from tests.support import leaks
from tests.support.broker import Identity
from tests.support.clock import ManualClock
from tests.support.servers import RedisServer, redis_server
from tests.support.workload_api import WorkloadApiServer


@pytest.fixture(autouse=True, scope="session")
def _broker_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every in-process broker logs at DEBUG to one file, scanned for secrets at the end."""
    path = tmp_path_factory.mktemp("logs") / "broker-debug.log"
    with path.open("a", encoding="utf-8") as stream:
        configure_logging("debug", stream=stream)
        leaks.watch_log(path)
        yield


_LEAKS_DIR = "BROKER_TEST_LEAK_FINDINGS"


def _dump_tasks(_signum: int, _frame: object) -> None:
    """SIGUSR1: print every asyncio task's stack and every thread's (a stuck test, live)."""
    faulthandler.dump_traceback(all_threads=True)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for task in asyncio.all_tasks(loop):
        task.print_stack(file=sys.stderr)


def pytest_configure(config: pytest.Config) -> None:
    """The controller makes a directory where xdist workers leave their scan findings.

    Every process (controller and workers) dumps its stacks and tasks on SIGUSR1.
    """
    signal.signal(signal.SIGUSR1, _dump_tasks)
    if not hasattr(config, "workerinput"):
        os.environ[_LEAKS_DIR] = tempfile.mkdtemp(prefix="broker-leak-findings-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any remembered secret reached an audit file or a log.

    Under xdist each worker scans what its own tests saw and leaves its findings for the
    controller, which fails the run for all of them.
    """
    findings = leaks.scan(leaks.LOGS, leaks.AUDIT_ROOTS)
    shared = Path(os.environ[_LEAKS_DIR]) if _LEAKS_DIR in os.environ else None
    worker = getattr(session.config, "workerinput", None)
    if worker is not None:
        if findings and shared is not None:
            (shared / f"{worker['workerid']}.txt").write_text("\n".join(findings) + "\n")
        return
    if shared is not None:
        for path in shared.glob("*.txt"):
            findings.extend(line for line in path.read_text().splitlines() if line)
    if findings:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "SECRETS FOUND IN AUDIT FILES OR LOGS:\n" + "\n".join(sorted(set(findings))[:50])
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def clock() -> ManualClock:
    """A clock at the real current time that tests can move."""
    return ManualClock()


@pytest.fixture
def identity(tmp_path: Path) -> Identity:
    """A fresh trust domain `example.org` with the broker's SVID and bundles on disk."""
    return Identity.create(tmp_path)


@pytest.fixture
def workload_api() -> Iterator[WorkloadApiServer]:
    """A local Workload API server on a Unix socket (short path: sockaddr_un is 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="wl-", dir="/tmp") as tmp:
        server = WorkloadApiServer(Path(tmp) / "agent.sock").start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (tests use their own key prefixes)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server
