"""broker-hook as a real process with its SVID from files, against the dev broker (no SPIRE)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import stat
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from broker.clock import SystemClock
from broker.dev.trust_domain import mint_jwt_svid
from tests.support import leaks
from tests.support.broker import eventually, free_port
from tests.support.devbroker import DevBroker, dev_broker
from tests.support.pki import Svid, TrustDomain

ANALYTICS = "spiffe://example.org/agent/analytics"


@dataclass
class Env:
    broker: DevBroker
    root: Path
    out: Path
    url: str

    @property
    def dev(self) -> Path:
        return self.broker.td.root

    def dev_layout(self, name: str = "analytics") -> list[str]:
        """The flags for the dev trust domain's own layout."""
        agent = self.dev / "agents" / name
        return [
            "--svid-dir",
            str(agent),
            "--svid-key-file",
            str(agent / "key.pem"),
            "--svid-bundle-file",
            str(self.dev / "ca" / "bundle.pem"),
        ]

    def helper_layout(self, svid: Svid) -> Path:
        """Write an SVID the way spiffe-helper does; returns the directory."""
        directory = self.root / "svids"
        svid.write(directory, "svid.pem", "svid_key.pem")
        shutil.copy(self.dev / "ca" / "bundle.pem", directory / "svid_bundle.pem")
        return directory


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    """The dev broker in-process; nothing else (no Workload API)."""
    async with dev_broker(tmp_path / "dev") as broker:
        yield Env(broker, tmp_path, tmp_path / "out", broker.url)


class Hook:
    """A broker-hook process; its output goes to a file scanned for secrets."""

    def __init__(self, env: Env, *args: str) -> None:
        self.log = env.root / f"hook-{len(list(env.root.glob('hook-*.log')))}.log"
        leaks.watch_log(self.log)
        environ = {k: v for k, v in os.environ.items() if k != "SPIFFE_ENDPOINT_SOCKET"}
        self.argv = [
            sys.executable,
            "-m",
            "broker.hook",
            "--broker-url",
            env.url,
            "--out",
            str(env.out),
            *args,
        ]
        self.environ = environ
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Hook:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, env=self.environ, stdout=log, stderr=log
            )
        return self

    async def wait(self, within: float = 60) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), within)

    async def run(self) -> int:
        await self.start()
        return await self.wait()

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait()

    @property
    def output(self) -> str:
        return self.log.read_text()


def read_credential(env: Env, tool: str = "analytics_api") -> dict[str, object] | None:
    path = env.out / f"{tool}.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    leaks.remember(document.get("token"))
    return document  # type: ignore[no-any-return]


def cnf_of(document: dict[str, object]) -> str | None:
    claims = jwt.decode(str(document["token"]), options={"verify_signature": False})
    return claims.get("cnf", {}).get("x5t#S256")


def leaf_thumbprint(pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificates(pem)[0].public_bytes(Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


async def test_dev_layout_writes_every_format(env: Env) -> None:
    """Init with the dev layout's files: files, env, json and template, all 0600, same token."""
    template = env.root / "app.conf.tmpl"
    template.write_text("token=${analytics_api_token}\nexpires=${analytics_api_expires_at}\n")
    hook = Hook(
        env,
        *env.dev_layout(),
        "--tools",
        "analytics_api",
        "--format",
        "files,env,json,template",
        "--template",
        str(template),
        "--once",
    )
    assert await hook.run() == 0, hook.output
    document = read_credential(env)
    assert document is not None
    token = str(document["token"])
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == ANALYTICS
    assert cnf_of(document) == leaf_thumbprint((env.dev / "agents/analytics/svid.pem").read_bytes())
    assert stat.S_IMODE(env.out.stat().st_mode) == 0o700
    for name in ("analytics_api.json", "credentials.env", "credentials.json", "app.conf"):
        assert stat.S_IMODE((env.out / name).stat().st_mode) == 0o600, name
        assert token in (env.out / name).read_text(), name
    assert f"BROKER_CREDENTIAL_ANALYTICS_API={token}\n" in (env.out / "credentials.env").read_text()
    assert (env.out / "app.conf").read_text().startswith(f"token={token}\nexpires=20")
    assert token not in hook.output
    assert '"credential written"' in hook.output


async def test_missing_svid_files_are_exit_3(env: Env) -> None:
    """No SVID files: exit 3 before anything is asked."""
    hook = Hook(env, "--svid-dir", str(env.root / "nothing"), "--tools", "analytics_api")
    assert await hook.run() == 3, hook.output
    assert "no SVID from files" in hook.output


async def test_jwt_svid_file_authenticates_without_a_client_certificate(env: Env) -> None:
    """--auth jwt --jwt-svid-file: the broker sees a JWT-SVID bearer (no cnf in the credential)."""
    token_file = env.root / "jwt-svid"
    svid = mint_jwt_svid(
        env.broker.td,
        agent="analytics",
        audience=env.broker.td.broker_id,
        ttl=300,
        clock=SystemClock(),
    )
    leaks.remember(svid)
    token_file.write_text(svid + "\n")
    hook = Hook(
        env,
        *env.dev_layout(),
        "--auth",
        "jwt",
        "--jwt-svid-file",
        str(token_file),
        "--tools",
        "analytics_api",
    )
    assert await hook.run() == 0, hook.output
    document = read_credential(env)
    assert document is not None
    assert cnf_of(document) is None
    assert (
        jwt.decode(str(document["token"]), options={"verify_signature": False})["sub"] == ANALYTICS
    )


async def test_sidecar_reloads_rotated_svid_files(env: Env) -> None:
    """spiffe-helper rotates the files: the next refresh presents the new SVID (cnf changes)."""
    td = TrustDomain.from_dev(env.dev)
    first = td.svid("/agent/analytics")
    directory = env.helper_layout(first)
    hook = await Hook(
        env,
        "--svid-dir",
        str(directory),
        "--tools",
        "analytics_api",
        "--ttl",
        "4",
        "--mode",
        "sidecar",
    ).start()
    try:
        document = await eventually(lambda: read_credential(env), within=20)
        assert cnf_of(document) == leaf_thumbprint(first.chain_pem())
        second = td.svid("/agent/analytics")
        # One file after the other (certificate, then key): the hook rides out the torn state.
        second.write(directory, "svid.pem", "svid_key.pem")

        def rotated() -> bool:
            current = read_credential(env)
            return current is not None and cnf_of(current) == leaf_thumbprint(second.chain_pem())

        await eventually(rotated, within=20)
    finally:
        assert await hook.stop() == 0, hook.output
    assert "SVID reloaded from files" in hook.output


CATCHER = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
signal.signal(signal.SIGHUP, lambda *_: out.write_text(out.read_text() + "hup\\n"))
out.write_text("ready\\n")
time.sleep(60)
"""

RECORDER = "import os, sys; open(sys.argv[1], 'a').write(os.environ['BROKER_HOOK_EVENT'] + '\\n')"


async def test_each_refresh_signals_and_runs_the_command(env: Env) -> None:
    """After every refresh: SIGHUP to the PID in --pid-file, and --on-refresh-exec runs."""
    marker = env.root / "signals"
    events = env.root / "events"
    agent = await asyncio.create_subprocess_exec(sys.executable, "-c", CATCHER, str(marker))
    try:
        await eventually(lambda: marker.exists() and "ready" in marker.read_text())
        (env.root / "agent.pid").write_text(str(agent.pid))
        command = f'{sys.executable} -c "{RECORDER}" {events}'
        hook = await Hook(
            env,
            *env.dev_layout(),
            "--tools",
            "analytics_api",
            "--ttl",
            "4",
            "--mode",
            "sidecar",
            "--on-refresh-signal",
            "SIGHUP",
            "--pid-file",
            str(env.root / "agent.pid"),
            "--on-refresh-exec",
            command,
        ).start()
        try:
            await eventually(lambda: marker.read_text().count("hup") >= 2, within=20)
            await eventually(lambda: events.exists() and events.read_text().count("written") >= 2)
        finally:
            assert await hook.stop() == 0, hook.output
    finally:
        agent.kill()
        await agent.wait()
    assert '"reload signal sent"' in hook.output
    assert '"refresh command ran"' in hook.output


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


async def test_health_turns_stale_when_refreshes_fail(tmp_path: Path) -> None:
    """Healthy while fresh; broker gone: 503 and no health file near expiry, then files removed."""
    port = free_port()
    health_file = tmp_path / "health" / "status.json"
    async with dev_broker(tmp_path / "dev") as broker:
        env = Env(broker, tmp_path, tmp_path / "out", broker.url)
        hook = await Hook(
            env,
            *env.dev_layout(),
            "--tools",
            "analytics_api",
            "--ttl",
            "5",
            "--mode",
            "sidecar",
            "--health-file",
            str(health_file),
            "--health-port",
            str(port),
            "--health-stale-seconds",
            "2",
            "--backoff-max",
            "0.5",
        ).start()
        await eventually(health_file.exists, within=20)
        assert await asyncio.to_thread(healthz, port) == 200
        assert json.loads(health_file.read_text())["status"] == "healthy"
    # The broker is gone: refreshes fail from here on.
    try:
        await eventually(lambda: not health_file.exists(), within=20)
        assert await asyncio.to_thread(healthz, port) == 503
        await eventually(lambda: not (env.out / "analytics_api.json").exists(), within=20)
        assert await asyncio.to_thread(healthz, port) == 503
    finally:
        assert await hook.stop() == 0, hook.output
    assert '"refresh failed; the current credentials stay until they expire"' in hook.output
    assert "expired without a successful refresh" in hook.output


async def test_revoked_credential_is_removed_and_replaced_then_agent_revocation_ends(
    env: Env,
) -> None:
    """Admin revokes the credential: a new one replaces it; revoking the agent: exit 5, no files."""
    hook = await Hook(
        env,
        *env.dev_layout(),
        "--tools",
        "analytics_api",
        "--format",
        "files,env",
        "--mode",
        "sidecar",
        "--check-interval",
        "0.2",
    ).start()
    admin = env.broker.agent("admin")
    try:
        first = await eventually(lambda: read_credential(env), within=20)
        revoked = await admin.request(
            "POST", "/v1/revoke", json_body={"credential_id": first["credential_id"]}
        )
        assert revoked.status == 200, revoked.body

        def replaced() -> dict[str, object] | None:
            current = read_credential(env)
            if current and current["credential_id"] != first["credential_id"]:
                return current
            return None

        second = await eventually(replaced, within=20)
        # The formats are written one after the other: the env file follows the tool file.
        env_file = env.out / "credentials.env"
        await eventually(lambda: str(second["token"]) in env_file.read_text())
        assert str(first["token"]) not in env_file.read_text()

        result = await admin.request(
            "POST", "/v1/admin/agents/revoke", json_body={"spiffe_id": ANALYTICS}
        )
        assert result.status == 200, result.body
        assert await hook.wait(30) == 5, hook.output
    finally:
        if hook.process is not None and hook.process.returncode is None:
            await hook.stop()
    assert not (env.out / "analytics_api.json").exists()
    assert "BROKER_CREDENTIAL_ANALYTICS_API=" not in (env.out / "credentials.env").read_text()
    assert "inactive at the broker (revoked)" in hook.output
    assert str(first["token"]) not in hook.output
    assert str(second["token"]) not in hook.output
