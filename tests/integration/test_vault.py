"""Vault-backed issuance against a real Vault-API server (OpenBao) and a real PostgreSQL.

Vault is configured by the project's own k8s/vault/setup.sh. With VAULT_ADDR and
VAULT_TOKEN set, the same tests run against that HashiCorp Vault instead.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from broker.audit.chain import verify_files
from broker.config.settings import load_settings
from tests.support import leaks
from tests.support.broker import (
    Identity,
    InProcessBroker,
    client_context,
    eventually,
    in_process_broker,
)
from tests.support.faults import refuse_credential_writes
from tests.support.pki import Svid, TrustDomain
from tests.support.servers import (
    PostgresServer,
    VaultServer,
    postgres_cluster,
    run_vault_setup,
    vault_server,
)
from tests.support.workload_api import WorkloadApiServer

pytestmark = pytest.mark.vault

BROKER_ID = "spiffe://example.org/broker"


def broker_svid(td: TrustDomain) -> Svid:
    """The broker's SVID with a DNS name, so it has a CN (Vault cert auth needs one)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker.example.org")])
    return td.svid(
        "/broker",
        dns_names=["broker.example.org", "localhost"],
        ip_addresses=["127.0.0.1"],
        subject=subject,
    )


@dataclass
class VaultEnv:
    td: TrustDomain
    vault: VaultServer
    pg: PostgresServer
    root: hvac.Client
    payments_key: str


@pytest.fixture(scope="session")
def vault_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultEnv]:
    """OpenBao + PostgreSQL, configured by k8s/vault/setup.sh for the trust domain."""
    directory = tmp_path_factory.mktemp("vault")
    td = TrustDomain("example.org")
    (directory / "bundle.pem").write_bytes(td.bundle_pem())
    (directory / "jwt.pub").write_bytes(
        td.jwt_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with postgres_cluster() as pg, vault_server(directory) as vault:
        run_vault_setup(
            vault,
            BROKER_SPIFFE_ID=BROKER_ID,
            SPIFFE_BUNDLE_FILE=str(directory / "bundle.pem"),
            JWT_SVID_PUBKEY_FILE=str(directory / "jwt.pub"),
            PG_CONNECTION_URL=pg.url_template,
            PG_ADMIN_USER=pg.admin_user,
            PG_ADMIN_PASSWORD=pg.admin_password,
        )
        root = hvac.Client(
            url=vault.address,
            token=vault.root_token,
            verify=str(vault.ca_file) if vault.ca_file else True,
        )
        payments_key = secrets.token_urlsafe(24)
        leaks.remember(payments_key)
        root.secrets.kv.v2.create_or_update_secret(
            path="tools/payments", secret={"api_key": payments_key}, mount_point="secret"
        )
        # A PKI role whose leases cannot be shortened: for the "lease too long" rule.
        if "pki/" not in root.sys.list_mounted_secrets_engines():
            root.sys.enable_secrets_engine("pki", path="pki", config={"max_lease_ttl": "24h"})
        root.write("pki/root/generate/internal", common_name="test root", ttl="24h")
        root.write(
            "pki/roles/agents", allow_any_name=True, ttl="1h", max_ttl="1h", generate_lease=True
        )
        policy = root.sys.read_policy("credential-broker")["data"]["rules"]
        root.sys.create_or_update_policy(
            "credential-broker",
            policy
            + '\npath "pki/issue/agents" { capabilities = ["update"] }\n'
            + 'path "sys/leases/lookup/pki/issue/agents/*" { capabilities = ["list", "sudo"] }\n',
        )
        yield VaultEnv(td, vault, pg, root, payments_key)


TOOLS: dict[str, Any] = {
    "ticketing_db": {
        "type": "vault",
        "vault": {"kind": "dynamic", "path": "database/creds/ticketing"},
    },
    "ops_token": {
        "type": "vault",
        "vault": {
            "kind": "token",
            "policies": ["broker-tool"],
            "role": "broker-tools",
            "num_uses": 5,
        },
    },
    "payments_key": {"type": "vault", "vault": {"kind": "kv", "path": "tools/payments"}},
    "broken_kv": {"type": "vault", "vault": {"kind": "kv", "path": "tools/missing"}},
    "pki_cert": {
        "type": "vault",
        "vault": {
            "kind": "dynamic",
            "method": "write",
            "path": "pki/issue/agents",
            "params": {"common_name": "agent.example.org"},
        },
    },
    "docs_api": {"type": "jwt", "audience": "https://docs.example.org", "scope": "docs:read"},
}


def write_broker_config(
    env: VaultEnv,
    directory: Path,
    *,
    identity: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    ident = Identity(env.td, broker_svid(env.td), directory)
    ident.write_files()
    (directory / "hmac.key").write_text(secrets.token_hex(32))
    (directory / "policy.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "vault-tests",
                "version": 1,
                "rules": [
                    {"id": "agents", "agents": ["spiffe://example.org/agent/*"], "tools": ["*"]}
                ],
            }
        )
    )
    config = ident.config(
        policy={"file": "policy.yaml"},
        jwt_issuer={"keys_file": "issuer/keys.json"},
        tools=TOOLS,
        audit={"path": "audit.log", "hmac_key_file": "hmac.key"},
        vault={
            "address": env.vault.address,
            **({"ca_file": str(env.vault.ca_file)} if env.vault.ca_file else {}),
            "auth": auth or {"method": "cert", "role": "credential-broker"},
            "timeout_seconds": 1,
            "breaker_failures": 2,
            "breaker_reset_seconds": 1,
            "reconcile_seconds": 0.3,
        },
        **overrides,
    )
    if identity is not None:
        config["identity"] = identity
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    leaks.watch_audit(directory)
    return path


@dataclass
class VaultBroker:
    env: VaultEnv
    running: InProcessBroker
    directory: Path
    agent_svid: Svid

    async def credentials(
        self, body: dict[str, Any], agent: Svid | None = None
    ) -> tuple[int, dict[str, Any]]:
        ctx = client_context(self.env.td.bundle_pem(), agent or self.agent_svid, self.directory)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.post(f"{self.running.url}/v1/credentials", json=body) as resp,
        ):
            payload = await resp.json(content_type=None)
            leaks.remember_response(payload)
            return resp.status, payload

    async def post(self, path: str, body: dict[str, Any], agent: Svid) -> tuple[int, Any]:
        ctx = client_context(self.env.td.bundle_pem(), agent, self.directory)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.post(f"{self.running.url}{path}", json=body) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    def audit(self) -> list[dict[str, Any]]:
        return [
            json.loads(line) for line in (self.directory / "audit.log").read_text().splitlines()
        ]


@pytest.fixture
async def broker(vault_env: VaultEnv, tmp_path: Path) -> AsyncIterator[VaultBroker]:
    """A broker (files identity, cert auth to Vault) on the session's Vault."""
    config = write_broker_config(vault_env, tmp_path)
    async with in_process_broker(load_settings(config)) as running:
        yield VaultBroker(vault_env, running, tmp_path, vault_env.td.svid("/agent/claims"))


def lease_ttl(env: VaultEnv, lease_id: str) -> int | None:
    try:
        return int(env.root.sys.read_lease(lease_id)["data"]["ttl"])
    except hvac.exceptions.InvalidRequest:
        return None


def ticketing_leases(env: VaultEnv) -> set[str]:
    try:
        listed = env.root.sys.list_leases("database/creds/ticketing/")
    except hvac.exceptions.InvalidPath:
        return set()
    return set(listed["data"]["keys"])


# -- each kind, end to end ------------------------------------------------------------------


async def test_dynamic_database_credential_logs_in_and_dies_on_revocation(
    broker: VaultBroker,
) -> None:
    """A dynamic PostgreSQL credential works, its lease is the granted TTL, revocation kills it."""
    status, body = await broker.credentials({"tools": ["ticketing_db"], "ttl_seconds": 120})
    assert status == 201, body
    [credential] = body["credentials"]
    assert credential["type"] == "vault"
    lease_id, data = credential["credential_id"], credential["data"]
    assert lease_id.startswith("database/creds/ticketing/")
    assert set(data) == {"username", "password"}
    assert broker.env.pg.can_login(data["username"], data["password"])
    ttl = lease_ttl(broker.env, lease_id)
    assert ttl is not None
    assert 100 <= ttl <= 120  # shortened from the role's 5 minutes to the granted 120 s

    record = broker.audit()[-1]
    assert record["event"] == "credential.issued"
    assert record["credentials"][0]["credential_id"].startswith("hmac-sha256:")
    assert lease_id not in json.dumps(broker.audit())
    assert record["agent"]["spiffe_id"] == "spiffe://example.org/agent/claims"
    assert record["policy"]["id"] == "vault-tests"

    status, _ = await broker.post("/v1/revoke", {"credential_id": lease_id}, broker.agent_svid)
    assert status == 200
    assert lease_ttl(broker.env, lease_id) is None
    assert not broker.env.pg.can_login(data["username"], data["password"])


async def test_child_token_carries_attribution_and_bounds(broker: VaultBroker) -> None:
    """A child token: tool policy, TTL = grant, num_uses, metadata naming agent and decision."""
    status, body = await broker.credentials({"tools": ["ops_token"], "ttl_seconds": 90})
    assert status == 201, body
    [credential] = body["credentials"]
    token, accessor = credential["data"]["token"], credential["credential_id"]
    looked = broker.env.root.auth.token.lookup_accessor(accessor)["data"]
    assert looked["meta"]["agent"] == "spiffe://example.org/agent/claims"
    assert looked["meta"]["decision_id"] == body["decision_id"]
    assert looked["meta"]["tool"] == "ops_token"
    assert "broker-tool" in looked["policies"]
    assert looked["ttl"] <= 90
    assert looked["explicit_max_ttl"] == 90
    assert looked["num_uses"] == 5
    assert looked["renewable"] is False
    own = hvac.Client(
        url=broker.env.vault.address, token=token, verify=str(broker.env.vault.ca_file)
    )
    assert own.auth.token.lookup_self()["data"]["accessor"] == accessor
    await broker.post("/v1/revoke", {"credential_id": accessor}, broker.agent_svid)
    with pytest.raises(hvac.exceptions.Forbidden):
        own.auth.token.lookup_self()


async def test_kv_secret_is_handed_over_wrapped_and_single_use(broker: VaultBroker) -> None:
    """The broker never sees the KV secret; the agent unwraps it exactly once."""
    status, body = await broker.credentials({"tools": ["payments_key"], "ttl_seconds": 60})
    assert status == 201, body
    [credential] = body["credentials"]
    wrapping = credential["data"]["wrapping_token"]
    client = hvac.Client(
        url=broker.env.vault.address, token=wrapping, verify=str(broker.env.vault.ca_file)
    )
    assert client.sys.unwrap()["data"]["data"]["api_key"] == broker.env.payments_key
    with pytest.raises(hvac.exceptions.VaultError):
        client.sys.unwrap()
    assert broker.env.payments_key not in json.dumps(body)


async def test_lease_longer_than_granted_is_revoked_and_fails(broker: VaultBroker) -> None:
    """A non-renewable lease of an hour for a 60 s grant: revoked in Vault, 503, audited."""

    def pki_leases() -> set[str]:
        listed = broker.env.root.list("sys/leases/lookup/pki/issue/agents/")
        return set(listed["data"]["keys"]) if listed else set()

    before = pki_leases()
    status, body = await broker.credentials({"tools": ["pki_cert"], "ttl_seconds": 60})
    assert status == 503
    assert "longer than" in body["detail"]
    assert pki_leases() == before  # the hour-long lease Vault granted was revoked again
    record = broker.audit()[-1]
    assert record["event"] == "credential.failed"
    assert record["reasons"] == ["vault_lease_too_long"]
    taken = [
        r
        for r in await broker.running.runtime.state.agent_credentials(
            "spiffe://example.org/agent/claims"
        )
        if r.tool == "pki_cert"
    ]
    assert taken
    assert all(r.revoked for r in taken)


# -- all or nothing, revocation ----------------------------------------------------------------


async def test_partial_failure_revokes_the_leases_already_taken(broker: VaultBroker) -> None:
    """ticketing_db succeeds, broken_kv fails: 503, the database lease is revoked in Vault."""
    status, body = await broker.credentials({"tools": ["ticketing_db", "broken_kv"]})
    assert status == 503
    assert "credentials" not in body
    record = broker.audit()[-1]
    assert record["event"] == "credential.failed"
    assert record["decision"] == "allow"
    # The lease taken for ticketing_db is recorded, revoked in Vault and released.
    leases = await broker.running.runtime.state.agent_credentials(
        "spiffe://example.org/agent/claims"
    )
    assert leases
    for lease in leases:
        assert lease.revoked
        assert lease_ttl(broker.env, lease.credential_id) is None
    assert await broker.running.runtime.state.leases_to_release(time.time()) == []


async def test_agent_revocation_revokes_its_vault_leases(broker: VaultBroker) -> None:
    """An admin revokes the agent: every lease it holds is revoked; the database login dies."""
    _, body = await broker.credentials({"tools": ["ticketing_db", "ops_token"]})
    data = body["credentials"][0]["data"]
    assert broker.env.pg.can_login(data["username"], data["password"])
    admin = broker.env.td.svid("/admin")
    status, result = await broker.post(
        "/v1/admin/agents/revoke", {"spiffe_id": "spiffe://example.org/agent/claims"}, admin
    )
    assert status == 200, result
    assert result["credentials_revoked"] == 2
    assert not broker.env.pg.can_login(data["username"], data["password"])
    assert lease_ttl(broker.env, body["credentials"][0]["credential_id"]) is None
    with pytest.raises(hvac.exceptions.InvalidRequest):
        broker.env.root.auth.token.lookup_accessor(body["credentials"][1]["credential_id"])


# -- outage ---------------------------------------------------------------------------------------


async def test_vault_outage_is_503_audited_and_jwt_tools_keep_working(broker: VaultBroker) -> None:
    """Vault frozen: its tools 503 (audited), JWT tools still issued, mixed ones nothing."""
    broker.env.vault.pause()
    try:
        status, body = await broker.credentials({"tools": ["ticketing_db"]})
        assert status == 503
        assert body["type"].endswith(":unavailable")
        assert "Vault" in body["detail"]
        assert broker.audit()[-1]["reasons"] == ["vault_unavailable"]

        status, body = await broker.credentials({"tools": ["docs_api"]})
        assert status == 201

        status, body = await broker.credentials({"tools": ["docs_api", "ticketing_db"]})
        assert status == 503
        minted = await broker.running.runtime.state.agent_credentials(
            "spiffe://example.org/agent/claims"
        )
        assert [r.revoked for r in minted if r.tool == "docs_api"].count(
            False
        ) == 1  # only the good one
        # The breaker is open now: refusals are immediate.
        started = time.monotonic()
        status, _ = await broker.credentials({"tools": ["ticketing_db"]})
        assert status == 503
        assert time.monotonic() - started < 0.5
    finally:
        broker.env.vault.resume()

    async def recovered() -> bool:
        status, _ = await broker.credentials({"tools": ["ticketing_db"]})
        return status == 201

    await eventually(recovered, within=10, interval=0.3)
    assert verify_files([broker.directory / "audit.log"]).ok
    state = broker.running.runtime.state
    await eventually(lambda: _no_pending(state), within=5, interval=0.2)  # nothing orphaned


async def _no_pending(state: Any) -> bool:
    return await state.leases_to_release(time.time()) == []


# -- authentication to Vault ----------------------------------------------------------------------


async def test_relogin_after_svid_rotation_uses_the_new_svid(broker: VaultBroker) -> None:
    """Rotating the broker's SVID makes it log in to Vault again, with the new certificate."""
    vault = broker.running.runtime.issuers["vault"]._vault
    assert vault is not None
    logins = vault.logins
    rotated = broker_svid(broker.env.td)
    rotated.write(broker.directory / "broker")
    await eventually(lambda: vault.logins > logins, within=10, interval=0.2)
    status, _ = await broker.credentials({"tools": ["ops_token"]})
    assert status == 201
    meta = vault._client.auth.token.lookup_self()["data"]["meta"]  # type: ignore[union-attr]
    assert int(meta["serial_number"]) == rotated.cert.serial_number  # decimal in Vault


async def test_jwt_svid_login_through_the_workload_api(vault_env: VaultEnv, tmp_path: Path) -> None:
    """With the Workload API identity source, the broker logs in to Vault with a JWT-SVID."""
    with tempfile.TemporaryDirectory(prefix="wl-", dir="/tmp") as sock_dir:
        server = WorkloadApiServer(Path(sock_dir) / "agent.sock").start()
        try:
            server.set_x509([broker_svid(vault_env.td)], vault_env.td)
            server.set_jwt_bundles({"example.org": vault_env.td}, issuer=vault_env.td)
            config = write_broker_config(
                vault_env,
                tmp_path,
                identity={"source": "workload_api", "workload_api": {"socket": server.socket}},
                auth={"method": "jwt", "role": "credential-broker", "audience": "vault"},
            )
            async with in_process_broker(load_settings(config)) as running:
                broker = VaultBroker(
                    vault_env, running, tmp_path, vault_env.td.svid("/agent/claims")
                )
                status, body = await broker.credentials({"tools": ["ticketing_db"]})
                assert status == 201, body
                assert "FetchJWTSVID" in server.calls
        finally:
            server.stop()


# -- nothing orphaned ------------------------------------------------------------------------------


async def test_a_restarted_broker_releases_what_the_previous_one_left(
    vault_env: VaultEnv, tmp_path: Path
) -> None:
    """A lease revoked in the state store only (a crash) is revoked by the next process."""
    from broker.clock import SystemClock
    from broker.state.sqlite import SqliteStateStore

    config = write_broker_config(vault_env, tmp_path)
    async with in_process_broker(load_settings(config)) as running:
        broker = VaultBroker(vault_env, running, tmp_path, vault_env.td.svid("/agent/claims"))
        _, body = await broker.credentials({"tools": ["ticketing_db"]})
    lease_id = body["credentials"][0]["credential_id"]
    data = body["credentials"][0]["data"]

    left_behind = SqliteStateStore(tmp_path / "state.db", SystemClock())
    await left_behind.start()
    await left_behind.revoke_credential(lease_id)  # the process died before telling Vault
    await left_behind.close()
    assert lease_ttl(vault_env, lease_id) is not None
    assert vault_env.pg.can_login(data["username"], data["password"])

    async with in_process_broker(load_settings(config)) as restarted:
        await eventually(lambda: lease_ttl(vault_env, lease_id) is None, within=10, interval=0.2)
        await eventually(lambda: _no_pending(restarted.runtime.state), within=5, interval=0.2)
    assert not vault_env.pg.can_login(data["username"], data["password"])


async def test_static_token_auth_works_and_warns(
    vault_env: VaultEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The static-token auth method (development only) works, and warns loudly."""
    token = vault_env.root.auth.token.create(policies=["credential-broker"], ttl="1h")["auth"][
        "client_token"
    ]
    leaks.remember(token)
    (tmp_path / "vault-token").write_text(token)
    config = write_broker_config(
        vault_env, tmp_path, auth={"method": "token", "token_file": "vault-token"}
    )
    async with in_process_broker(load_settings(config)) as running:
        broker = VaultBroker(vault_env, running, tmp_path, vault_env.td.svid("/agent/claims"))
        status, body = await broker.credentials({"tools": ["ops_token"]})
        assert status == 201, body
    assert "is for development only" in caplog.text
    assert token not in caplog.text


async def test_state_store_failure_after_vault_issued_revokes_the_lease(
    broker: VaultBroker,
) -> None:
    """The state refuses the lease record: 503, `credential.failed`, the lease revoked in Vault."""
    state = broker.running.runtime.state
    before = ticketing_leases(broker.env)
    with refuse_credential_writes(state):
        status, body = await broker.credentials({"tools": ["ticketing_db"]})
    assert status == 503, body
    assert "credentials" not in body
    record = broker.audit()[-1]
    assert record["event"] == "credential.failed"
    # The lease Vault created for this request was revoked at once.
    assert ticketing_leases(broker.env) <= before
