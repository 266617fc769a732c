"""No orphaned Vault credential: what Vault creates for a timed-out request gets revoked.

OpenBao is frozen (SIGSTOP) while the broker waits for a database credential or a child
token; the broker gives up after `timeout_seconds` and answers 503. Behind a relay that,
like some load balancers, does not tell OpenBao the client left, the request is carried
out once OpenBao resumes: a PostgreSQL role and its lease (or a token) that the broker
never saw. The reconciler's orphan sweep, with the policy `k8s/vault/setup.sh` writes,
must find it and revoke it once it is older than the grace period, and never touch what
the broker recorded.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import hvac
import pytest
import yaml

from broker.config.settings import load_settings
from tests.integration.test_vault import (  # the same OpenBao + PostgreSQL environment
    VaultBroker,
    VaultEnv,
    lease_ttl,
    ticketing_leases,
    vault_env,
    write_broker_config,
)
from tests.support.broker import eventually, in_process_broker
from tests.support.proxy import stubborn_proxy
from tests.support.servers import PostgresServer

__all__ = ["vault_env"]  # a fixture, imported to be found here

pytestmark = pytest.mark.vault

GRACE_SECONDS = 3


def database_roles(pg: PostgresServer) -> set[str]:
    """The roles Vault's database engine created (`v-...`), read as the admin."""
    result = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            pg.admin_user,
            "-d",
            "postgres",
            "-tAc",
            "select rolname from pg_roles where rolname like 'v-%'",
            "-w",
        ],
        env={**os.environ, "PGPASSWORD": pg.admin_password},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(result.stdout.split())


def accessors(env: VaultEnv) -> set[str]:
    return set(env.root.list("auth/token/accessors")["data"]["keys"])


def token_exists(env: VaultEnv, accessor: str) -> bool:
    try:
        env.root.auth.token.lookup_accessor(accessor)
    except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
        return False
    return True


def through(config: Path, proxy_address: str) -> Path:
    """The broker's configuration, reaching Vault through the relay, with a short grace."""
    data: dict[str, Any] = yaml.safe_load(config.read_text())
    data["vault"]["address"] = proxy_address
    data["vault"]["orphan_grace_seconds"] = GRACE_SECONDS
    data["vault"]["breaker_failures"] = 100  # the sweep is under test, not the breaker
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


async def frozen_request(broker: VaultBroker, tool: str) -> None:
    """Ask for `tool` while OpenBao is frozen: 503 after the deadline."""
    broker.env.vault.pause()
    try:
        status, body = await broker.credentials({"tools": [tool]})
        assert status == 503, body
        await asyncio.sleep(0.3)
    finally:
        broker.env.vault.resume()


async def test_database_lease_orphaned_by_a_timeout_is_revoked(
    vault_env: VaultEnv, tmp_path: Path
) -> None:
    """A database/creds lease Vault made after the broker timed out: revoked, its role dropped."""
    env = vault_env
    with stubborn_proxy(env.vault.address) as proxy:
        config = through(write_broker_config(env, tmp_path), proxy.address)
        async with in_process_broker(load_settings(config)) as running:
            broker = VaultBroker(env, running, tmp_path, env.td.svid("/agent/claims"))
            status, body = await broker.credentials({"tools": ["ticketing_db"]})
            assert status == 201, body
            recorded = body["credentials"][0]
            leases_before, roles_before = ticketing_leases(env), database_roles(env.pg)

            await frozen_request(broker, "ticketing_db")
            orphaned = await eventually(
                lambda: ticketing_leases(env) - leases_before, within=10, interval=0.1
            )
            assert len(orphaned) == 1
            [orphan_role] = database_roles(env.pg) - roles_before  # a live PostgreSQL login
            seen_at = time.monotonic()

            await asyncio.sleep(1)  # younger than the grace: not yet (an issuance in flight)
            assert ticketing_leases(env) & orphaned == orphaned

            await eventually(lambda: not ticketing_leases(env) & orphaned, within=20, interval=0.2)
            assert time.monotonic() - seen_at >= GRACE_SECONDS - 1
            assert orphan_role not in database_roles(env.pg)
            # What the broker recorded is live and untouched.
            lease_id = recorded["credential_id"]
            assert lease_ttl(env, lease_id) is not None
            assert env.pg.can_login(recorded["data"]["username"], recorded["data"]["password"])


async def test_child_token_orphaned_by_a_timeout_is_revoked(
    vault_env: VaultEnv, tmp_path: Path
) -> None:
    """A child token Vault made after the broker timed out: found by its metadata, revoked."""
    env = vault_env
    with stubborn_proxy(env.vault.address) as proxy:
        config = through(write_broker_config(env, tmp_path), proxy.address)
        async with in_process_broker(load_settings(config)) as running:
            broker = VaultBroker(env, running, tmp_path, env.td.svid("/agent/claims"))
            status, body = await broker.credentials({"tools": ["ops_token"]})
            assert status == 201, body
            recorded = body["credentials"][0]["credential_id"]
            before = accessors(env)

            await frozen_request(broker, "ops_token")

            def orphans() -> set[str]:
                new = accessors(env) - before
                looked = [env.root.auth.token.lookup_accessor(a)["data"] for a in new]
                return {t["accessor"] for t in looked if (t["meta"] or {}).get("decision_id")}

            orphaned = await eventually(orphans, within=10, interval=0.1)
            [accessor] = orphaned
            meta = env.root.auth.token.lookup_accessor(accessor)["data"]["meta"]
            assert meta["tool"] == "ops_token"
            assert meta["agent"] == "spiffe://example.org/agent/claims"

            await eventually(lambda: not token_exists(env, accessor), within=20, interval=0.2)
            assert token_exists(env, recorded)  # recorded and live: never swept
