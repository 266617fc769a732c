"""Running the broker in tests: configs, an in-process server, a real process, TLS clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from cryptography import x509

from broker.config.settings import Settings, load_settings
from broker.typing import Clock
from broker.web.app import create_app
from broker.web.keys import RUNTIME
from tests.support import leaks
from tests.support.pki import Svid, TrustDomain

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@dataclass
class Identity:
    """A test trust domain with the broker's SVID written as files, ready to configure."""

    td: TrustDomain
    broker: Svid
    directory: Path

    @classmethod
    def create(cls, directory: Path, name: str = "example.org", **td_options: Any) -> Identity:
        td = TrustDomain(name, **td_options)
        broker = td.svid("/broker", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        identity = cls(td, broker, directory)
        identity.write_files()
        return identity

    @property
    def broker_id(self) -> str:
        return f"spiffe://{self.td.name}/broker"

    def write_files(self) -> None:
        self.broker.write(self.directory / "broker")
        (self.directory / "ca").mkdir(parents=True, exist_ok=True)
        (self.directory / "ca" / "bundle.pem").write_bytes(self.td.bundle_pem())
        (self.directory / "jwt").mkdir(parents=True, exist_ok=True)
        (self.directory / "jwt" / "bundle.jwks").write_bytes(self.td.jwks_bytes())

    def config(self, **override: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "trust_domain": self.td.name,
            "spiffe_id": self.broker_id,
            "listen": {"host": "127.0.0.1", "port": 0, "drain_delay_seconds": 0},
            "identity": {
                "source": "files",
                "files": {
                    "svid": "broker/svid.pem",
                    "key": "broker/key.pem",
                    "bundle": "ca/bundle.pem",
                    "jwt_bundle": "jwt/bundle.jwks",
                    "poll_seconds": 0.2,
                },
            },
            "authentication": {"jwt_svid": {"audience": self.broker_id, "leeway_seconds": 5}},
            "admins": [f"spiffe://{self.td.name}/admin"],
            "log_level": "warning",
        }
        return deep_merge(base, override)

    def write_config(self, name: str = "config.yaml", **override: Any) -> Path:
        path = self.directory / name
        path.write_text(yaml.safe_dump(self.config(**override), sort_keys=False))
        return path

    def settings(self, **override: Any) -> Settings:
        return load_settings(self.write_config(**override))


def client_context(
    ca_pem: bytes, client: Svid | None = None, workdir: Path | None = None
) -> ssl.SSLContext:
    """A TLS client context trusting `ca_pem`, presenting `client` when given."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    if client is not None:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            cert, key = client.write(Path(tmp))
            ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class InProcessBroker:
    url: str
    app: web.Application

    @property
    def runtime(self) -> Any:
        return self.app[RUNTIME]


@asynccontextmanager
async def in_process_broker(
    settings: Settings, clock: Clock | None = None
) -> AsyncIterator[InProcessBroker]:
    """Serve the real application over real TLS on a free port, in this event loop."""
    app = create_app(settings, clock=clock)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=app[RUNTIME].tls.context)
        await site.start()
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
        yield InProcessBroker(f"https://127.0.0.1:{port}", app)
    finally:
        await runner.cleanup()


def server_certificate(url: str, ca_pem: bytes) -> x509.Certificate:
    """Do a fresh TLS handshake and return the certificate the server presented (blocking)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we only want to see the certificate
    with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def eventually(predicate: Any, within: float = 5.0, interval: float = 0.05) -> Any:
    """Poll an (a)sync predicate until it returns a truthy value."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


class BrokerProcess:
    """The broker as a real OS process, stopped by PID."""

    def __init__(self, args: list[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> None:
        self.args = args
        self.cwd = cwd
        self.stdout_path = cwd / f"broker-{os.getpid()}-{id(self)}.out"
        self.stderr_path = cwd / f"broker-{os.getpid()}-{id(self)}.err"
        self._env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BrokerProcess:
        leaks.watch_log(self.stderr_path)
        leaks.watch_audit(self.cwd)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "broker", *self.args],
                cwd=self.cwd,
                stdout=out,
                stderr=err,
                env=self._env,
            )
        return self

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, url: str, ca_bundle: Path, timeout: float = 20.0) -> None:
        """Wait until /readyz answers 200 (the bundle file may not exist yet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited {self.proc.returncode}: {self.stderr[-2000:]}")
            if not ca_bundle.is_file():
                time.sleep(0.1)
                continue
            ctx = ssl.create_default_context(cafile=str(ca_bundle))
            try:
                with urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"broker not ready in {timeout}s: {self.stderr[-2000:]}")

    def wait_listening(self, count: int, timeout: float = 30.0) -> None:
        """Wait until `count` API listeners logged "listening" (every worker of `--workers`).

        /readyz answers as soon as one worker is up; a test that needs the kernel to spread
        connections over all of them waits for every worker.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited {self.proc.returncode}: {self.stderr[-2000:]}")
            if self._listeners() >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"{count} listeners not up in {timeout}s: {self.stderr[-3000:]}")

    def _listeners(self) -> int:
        count = 0
        for line in self.stderr.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a plain line, or one still being written
            if record.get("event") == "listening" and record.get("logger") == "broker.web.server":
                count += 1
        return count

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        return int(self.proc.returncode)


@contextmanager
def broker_process(
    args: list[str], *, cwd: Path, env: Mapping[str, str] | None = None
) -> Iterator[BrokerProcess]:
    process = BrokerProcess(args, cwd=cwd, env=env).start()
    try:
        yield process
    finally:
        process.stop()
