"""Shared fixtures: run-time trust domains, the local Workload API, the manual clock."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.logging import configure_logging
from tests.support.broker import Identity
from tests.support.clock import ManualClock
from tests.support.workload_api import WorkloadApiServer


@pytest.fixture(autouse=True, scope="session")
def _quiet_logging() -> None:
    configure_logging("warning")


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
