"""broker-hook as a real process, with its SVID from the local Workload API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from tests.support import leaks
from tests.support.devbroker import DevBroker, dev_broker
from tests.support.pki import Svid, TrustDomain
from tests.support.workload_api import WorkloadApiServer


@dataclass
class HookEnv:
    broker: DevBroker
    workload_api: WorkloadApiServer
    td: TrustDomain
    out: Path

    def serve_agent(self, name: str) -> Svid:
        """Make the Workload API hand out this dev agent's SVID (as SPIRE would)."""
        svid = self.td.svid(f"/agent/{name}")
        self.workload_api.set_x509([svid], self.td)
        self.workload_api.set_jwt_bundles({"example.org": self.td}, issuer=self.td)
        return svid


@pytest.fixture
async def env(tmp_path: Path, workload_api: WorkloadApiServer) -> AsyncIterator[HookEnv]:
    """The dev broker in-process, and a Workload API issuing from the same trust domain."""
    async with dev_broker(tmp_path / "dev") as broker:
        yield HookEnv(broker, workload_api, TrustDomain.from_dev(broker.td.root), tmp_path / "out")


async def hook(
    env: HookEnv, *args: str, wait: bool = True, socket: str | None = None
) -> tuple[int, str, asyncio.subprocess.Process]:
    """Run broker-hook; returns exit code and output (and the process, for sidecars)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker.hook",
        "--broker-url",
        env.broker.url,
        "--out",
        str(env.out),
        *args,
        env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": socket or env.workload_api.socket},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if not wait:
        return 0, "", process
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    output = stdout.decode() + stderr.decode()
    (env.out.parent / f"hook-{process.pid}.log").write_text(output)
    leaks.watch_log(env.out.parent / f"hook-{process.pid}.log")
    return int(process.returncode or 0), output, process


def credential_file(env: HookEnv, tool: str) -> dict[str, object]:
    path = env.out / f"{tool}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    leaks.remember(document.get("token"))
    return document  # type: ignore[no-any-return]


async def test_init_mode_writes_private_files_and_prints_no_secret(env: HookEnv) -> None:
    """Exit 0; <out>/<tool>.json (0600) holds a JWT for the pod's SPIFFE ID; output has no token."""
    env.serve_agent("analytics")
    code, output, _ = await hook(env, "--tools", "analytics_api", "--ttl", "120")
    assert code == 0, output
    document = credential_file(env, "analytics_api")
    assert stat.S_IMODE(env.out.stat().st_mode) == 0o700
    token = str(document["token"])
    assert (
        jwt.decode(token, options={"verify_signature": False})["sub"]
        == "spiffe://example.org/agent/analytics"
    )
    assert document["decision_id"]
    assert token not in output
    assert token.rsplit(".", 1)[1] not in output
    assert '"credential written"' in output


async def test_user_token_file_acts_on_behalf_of_a_user(env: HookEnv, tmp_path: Path) -> None:
    """With --user-token-file the credential is for that user."""
    env.serve_agent("claims")
    token_file = tmp_path / "user-token"
    token_file.write_text(env.broker.user_token("alice"))
    code, output, _ = await hook(
        env, "--tools", "customer_data_api", "--user-token-file", str(token_file)
    )
    assert code == 0, output
    claims = jwt.decode(
        str(credential_file(env, "customer_data_api")["token"]), options={"verify_signature": False}
    )
    assert claims["sub"] == "alice"


async def test_jwt_svid_authentication(env: HookEnv) -> None:
    """--auth jwt presents a JWT-SVID from the Workload API instead of the X.509-SVID."""
    env.serve_agent("analytics")
    code, output, _ = await hook(env, "--tools", "analytics_api", "--auth", "jwt")
    assert code == 0, output
    assert "FetchJWTSVID" in env.workload_api.calls
    assert credential_file(env, "analytics_api")["tool"] == "analytics_api"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--tools", "customer_data_api"], 5, "broker refused (403)"),
        (
            ["--tools", "analytics_api", "--broker-id", "spiffe://example.org/impostor"],
            4,
            "not the broker spiffe://example.org/impostor",
        ),
        (["--tools", "analytics_api", "--ttl", "86400"], 5, "ttl_exceeds_max"),
    ],
)
async def test_failures_have_documented_exit_codes(
    env: HookEnv, args: list[str], code: int, message: str
) -> None:
    """Refused: 5; the server is not the expected broker: 4. Nothing is written."""
    env.serve_agent("analytics")
    exit_code, output, _ = await hook(env, *args, "--timeout", "2")
    assert exit_code == code, output
    assert message in output
    assert not (env.out / "customer_data_api.json").exists()


async def test_no_workload_api_is_exit_3(env: HookEnv, tmp_path: Path) -> None:
    """Without a Workload API there is no SVID: exit 3."""
    code, output, _ = await hook(
        env, "--tools", "analytics_api", "--timeout", "1", socket=f"unix://{tmp_path}/nothing.sock"
    )
    assert code == 3, output
    assert "no SVID from the Workload API" in output


async def test_sidecar_refreshes_and_revokes_on_stop(env: HookEnv) -> None:
    """Sidecar: a new credential at half-life; SIGTERM revokes the one held and exits 0."""
    env.serve_agent("analytics")
    _, _, process = await hook(
        env, "--tools", "analytics_api", "--ttl", "4", "--mode", "sidecar", wait=False
    )
    path = env.out / "analytics_api.json"
    for _ in range(100):
        if path.exists():
            break
        await asyncio.sleep(0.1)
    first = credential_file(env, "analytics_api")["credential_id"]
    for _ in range(60):
        await asyncio.sleep(0.1)
        current = credential_file(env, "analytics_api")
        if current["credential_id"] != first:
            break
    assert current["credential_id"] != first, "the sidecar did not refresh at half-life"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    output = stdout.decode() + stderr.decode()
    assert process.returncode == 0, output
    assert "credential revoked on exit" in output
    introspected = await env.broker.agent("admin").request(
        "POST",
        "/v1/introspect",
        data=urllib.parse.urlencode({"token": current["token"]}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert introspected.body == {"active": False}
