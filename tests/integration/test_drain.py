"""Graceful drain of a real `broker serve` process on SIGTERM.

A request is held in flight by sending its body in two halves, so that the listener's
close and the process's exit can be observed while it is still open: no assertion here
depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.clock import SystemClock
from broker.config.settings import load_settings
from broker.dev.trust_domain import DevTrustDomain, init_trust_domain
from broker.errors import ConfigError
from tests.support import leaks
from tests.support.broker import BrokerProcess, eventually, free_port
from tests.support.devbroker import Agent

ISSUE = {"tools": ["analytics_api"]}


def drain_config(td: DevTrustDomain, port: int, **listen: float) -> Path:
    data = yaml.safe_load(td.config.read_text())
    data["listen"].update(port=port, **listen)
    path = td.root / "config-drain.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class HeldRequest:
    """POST /v1/credentials over mTLS whose body is only half sent: in flight until finished."""

    def __init__(self, agent: Agent, port: int) -> None:
        body = json.dumps(ISSUE).encode()
        head = (
            f"POST /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        raw = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock = agent.context().wrap_socket(raw, server_hostname="127.0.0.1")
        self.sock.sendall(head.encode() + body[:5])
        self.rest = body[5:]

    def finish(self) -> tuple[int, dict[str, Any]]:
        self.sock.sendall(self.rest)
        response = http.client.HTTPResponse(self.sock)  # type: ignore[arg-type]
        response.begin()
        body = json.loads(response.read())
        leaks.remember_response(body)
        self.sock.close()
        return response.status, body


def readyz(url: str, ca_bundle: Path) -> tuple[int, dict[str, Any]]:
    """GET /readyz on a new connection."""
    ctx = ssl.create_default_context(cafile=str(ca_bundle))
    try:
        with urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def hold(agent: Agent, port: int) -> HeldRequest:
    """Open a held request, then complete another one: by then the broker is handling it."""
    held = await asyncio.to_thread(HeldRequest, agent, port)
    # The broker reads the held request's headers on its next loop turns; completing
    # another request after a pause makes sure it has (a request whose headers were
    # never read is not in flight, and SIGINT does not wait for it).
    await asyncio.sleep(0.5)
    assert (await agent.credentials(ISSUE)).status == 201
    return held


def refused(port: int) -> bool:
    """Whether a new TCP connection to the listener is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def sigterm(process: BrokerProcess) -> None:
    assert process.proc is not None
    os.kill(process.proc.pid, signal.SIGTERM)


def alive(process: BrokerProcess) -> bool:
    assert process.proc is not None
    return process.proc.poll() is None


def exit_code(process: BrokerProcess) -> int:
    assert process.proc is not None
    return process.proc.wait(timeout=60)


@pytest.fixture
def td(tmp_path: Path) -> DevTrustDomain:
    trust_domain, _ = init_trust_domain(tmp_path / "dev", None, SystemClock())
    leaks.watch_audit(trust_domain.root)
    return trust_domain


async def test_sigterm_mid_burst_fails_no_request(td: DevTrustDomain, tmp_path: Path) -> None:
    """SIGTERM in a burst: all 201, /readyz 503 on new connections, then refused, exit 0."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    config = drain_config(td, port, drain_delay_seconds=120, shutdown_timeout_seconds=60)
    process = BrokerProcess(["serve", "--config", str(config)], cwd=tmp_path).start()
    try:
        process.wait_ready(url, td.ca_bundle)
        agent = Agent(td, url, "analytics")
        held = await hold(agent, port)

        async def issue() -> int:
            return (await agent.credentials(ISSUE)).status

        first = [asyncio.create_task(issue()) for _ in range(16)]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        sigterm(process)  # in the middle of the burst
        ready = await eventually(lambda: readyz(url, td.ca_bundle)[0] == 503, within=20)
        assert ready
        # Still inside the delay: new connections are accepted and served in full.
        second = [asyncio.create_task(issue()) for _ in range(16)]
        statuses = await asyncio.gather(*first, *second)
        assert statuses == [201] * 32
        status, body = readyz(url, td.ca_bundle)
        assert status == 503
        assert body["draining"] is True
        assert alive(process)

        sigterm(process)  # a second SIGTERM ends the delay early
        await eventually(lambda: refused(port), within=30)
        assert alive(process)  # the held request keeps it finishing, not dead
        status, body = await asyncio.to_thread(held.finish)
        assert status == 201, body
        assert body["credentials"][0]["tool"] == "analytics_api"
        assert exit_code(process) == 0
    finally:
        process.stop()


async def test_listener_closes_after_the_delay_and_in_flight_requests_finish(
    td: DevTrustDomain, tmp_path: Path
) -> None:
    """With no second signal the delay ends by itself; the held request still gets its 201."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    config = drain_config(td, port, drain_delay_seconds=1, shutdown_timeout_seconds=60)
    process = BrokerProcess(["serve", "--config", str(config)], cwd=tmp_path).start()
    try:
        process.wait_ready(url, td.ca_bundle)
        held = await hold(Agent(td, url, "analytics"), port)
        sigterm(process)
        await eventually(lambda: refused(port), within=30)
        assert alive(process)
        status, _ = await asyncio.to_thread(held.finish)
        assert status == 201
        assert exit_code(process) == 0
    finally:
        process.stop()


async def test_sigint_skips_the_delay(td: DevTrustDomain, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) at a terminal: no drain delay, in-flight requests still finish, exit 0."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    config = drain_config(td, port, drain_delay_seconds=300, shutdown_timeout_seconds=60)
    process = BrokerProcess(["serve", "--config", str(config)], cwd=tmp_path).start()
    try:
        process.wait_ready(url, td.ca_bundle)
        held = await hold(Agent(td, url, "analytics"), port)
        assert process.proc is not None
        os.kill(process.proc.pid, signal.SIGINT)
        await eventually(lambda: refused(port), within=30)  # not after 300 s
        assert alive(process)
        status, _ = await asyncio.to_thread(held.finish)
        assert status == 201
        assert exit_code(process) == 0
    finally:
        process.stop()


async def test_a_request_that_never_finishes_is_cut_at_the_shutdown_timeout(
    td: DevTrustDomain, tmp_path: Path
) -> None:
    """A request still open after shutdown_timeout_seconds does not keep the process: exit 0."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    config = drain_config(td, port, drain_delay_seconds=0, shutdown_timeout_seconds=1)
    process = BrokerProcess(["serve", "--config", str(config)], cwd=tmp_path).start()
    try:
        process.wait_ready(url, td.ca_bundle)
        held = await hold(Agent(td, url, "analytics"), port)
        sigterm(process)
        assert exit_code(process) == 0  # without the timeout it would wait for the body
        held.sock.close()
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("drain_delay_seconds", -1),
        ("drain_delay_seconds", 301),
        ("shutdown_timeout_seconds", 0),
        ("shutdown_timeout_seconds", 601),
        ("shutdown_timeout_seconds", "soon"),
    ],
)
def test_drain_settings_are_bounded(td: DevTrustDomain, key: str, value: object) -> None:
    """Out-of-range drain settings are refused, naming the key."""
    data = yaml.safe_load(td.config.read_text())
    data["listen"][key] = value
    td.config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=f"listen.{key}"):
        load_settings(td.config)


def test_drain_settings_default_to_5_and_20_seconds(td: DevTrustDomain) -> None:
    """Without the keys: a 5 s drain delay and a 20 s shutdown timeout (dev sets a 0 s delay)."""
    data = yaml.safe_load(td.config.read_text())
    assert data["listen"].pop("drain_delay_seconds") == 0
    td.config.write_text(yaml.safe_dump(data))
    listen = load_settings(td.config).listen
    assert (listen.drain_delay_seconds, listen.shutdown_timeout_seconds) == (5.0, 20.0)
