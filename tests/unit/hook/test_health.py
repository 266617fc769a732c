"""Health: fresh, stale near expiry, the health file and the HTTP endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import pytest

from broker.hook.errors import HookError
from broker.hook.health import Health, HealthServer
from broker.hook.model import Credential
from tests.support.clock import ManualClock


def credential(tool: str, clock: ManualClock, ttl: float) -> Credential:
    now = clock.time()
    document = {"tool": tool, "type": "jwt", "token": "secret-token-value"}
    return Credential(tool, "jwt", now + ttl, now, "d", MappingProxyType(document))


def test_missing_then_fresh_then_stale(clock: ManualClock, tmp_path: Path) -> None:
    """Unhealthy until every tool is held; healthy; unhealthy within N s of the first expiry."""
    path = tmp_path / "health.json"
    health = Health(("a", "b"), stale_seconds=10, file=path, clock=clock.time)
    assert not health.status().healthy
    health.update({"a": credential("a", clock, 60)}, refreshed=True)
    assert health.status().missing == ("b",)
    assert not path.exists()
    health.update(
        {"a": credential("a", clock, 60), "b": credential("b", clock, 30)}, refreshed=True
    )
    assert health.status().healthy
    document = json.loads(path.read_text())
    assert document["status"] == "healthy"
    assert document["missing"] == []
    assert "secret-token-value" not in path.read_text()
    assert health.stale_at() == pytest.approx(clock.time() + 20)
    clock.advance(19)
    health.sync()
    assert path.exists()
    clock.advance(2)
    health.sync()
    assert not health.status().healthy
    assert "expires in 9 s" in health.status().reason
    assert not path.exists()


def test_refresh_rewrites_the_file(clock: ManualClock, tmp_path: Path) -> None:
    """Each successful refresh rewrites last_refresh_at."""
    path = tmp_path / "health.json"
    health = Health(("a",), stale_seconds=1, file=path, clock=clock.time)
    health.update({"a": credential("a", clock, 60)}, refreshed=True)
    first = json.loads(path.read_text())["last_refresh_at"]
    clock.advance(30)
    health.update({"a": credential("a", clock, 60)}, refreshed=True)
    assert json.loads(path.read_text())["last_refresh_at"] != first


def test_unwritable_health_file_is_exit_7(clock: ManualClock, tmp_path: Path) -> None:
    """A health file that cannot be written is an output error."""
    (tmp_path / "file").write_text("")
    health = Health(("a",), stale_seconds=1, file=tmp_path / "file" / "h.json", clock=clock.time)
    with pytest.raises(HookError) as caught:
        health.update({"a": credential("a", clock, 60)}, refreshed=True)
    assert caught.value.code == 7


def get(port: int, path: str = "/healthz") -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_endpoint_answers_200_fresh_and_503_stale(clock: ManualClock) -> None:
    """GET /healthz is evaluated per request: 200 while fresh, 503 once near expiry; 404 else."""
    health = Health(("a",), stale_seconds=10, clock=clock.time)
    server = HealthServer(health, 0)
    server.start()
    try:
        assert get(server.port)[0] == 503
        health.update({"a": credential("a", clock, 60)}, refreshed=True)
        status, body = get(server.port)
        assert (status, body["status"]) == (200, "healthy")
        clock.advance(55)
        status, body = get(server.port)
        assert (status, body["status"]) == (503, "stale")
        assert get(server.port, "/other")[0] == 404
    finally:
        server.close()


def test_port_in_use_is_a_usage_error(clock: ManualClock) -> None:
    """A --health-port that cannot be bound fails at start with exit 2."""
    health = Health(("a",), stale_seconds=10, clock=clock.time)
    first = HealthServer(health, 0)
    try:
        with pytest.raises(HookError) as caught:
            HealthServer(health, first.port)
        assert caught.value.code == 2
    finally:
        first.close()


def test_iso_times_are_utc(clock: ManualClock) -> None:
    """Times in the status are RFC 3339 UTC."""
    clock.set(datetime(2030, 1, 1, tzinfo=UTC))
    health = Health(("a",), stale_seconds=1, clock=clock.time)
    health.update({"a": credential("a", clock, 60)}, refreshed=True)
    assert health.status().document()["oldest_expires_at"] == "2030-01-01T00:01:00Z"
