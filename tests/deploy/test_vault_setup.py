"""k8s/vault/setup.sh options that keep Vault working past SPIRE's rotations, against OpenBao.

JWT auth reads SPIRE's keys from an OIDC discovery provider (served here over HTTPS by a
test CA) and follows a key rotation without running setup.sh again; the database role
grants SELECT on the named tables and nothing more.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hvac
import pytest

from broker.dev.pki import new_ec_key
from tests.support.broker import free_port
from tests.support.pki import TrustDomain
from tests.support.servers import (
    PostgresServer,
    VaultServer,
    postgres_cluster,
    run_vault_setup,
    vault_server,
)

pytestmark = pytest.mark.vault

BROKER_ID = "spiffe://example.org/ns/credential-broker/sa/credential-broker"


@dataclass
class DiscoveryProvider:
    """SPIRE's OIDC discovery provider, as Vault sees it: a discovery document and keys."""

    url: str
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0


def _handler(provider: DiscoveryProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/.well-known/openid-configuration":
                body = {
                    "issuer": provider.url,
                    "jwks_uri": f"{provider.url}/keys",
                    "authorization_endpoint": "",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": [],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384"],
                }
            elif self.path == "/keys":
                provider.fetches += 1
                body = {"keys": provider.keys}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: object) -> None:
            return

    return Handler


@pytest.fixture(scope="module")
def td() -> TrustDomain:
    return TrustDomain("example.org")


@pytest.fixture(scope="module")
def ca_file(td: TrustDomain, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(td.bundle_pem())
    return path


@pytest.fixture(scope="module")
def provider(
    td: TrustDomain, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DiscoveryProvider]:
    """HTTPS on loopback with a certificate of the test CA, keys = the trust domain's JWKS."""
    directory = tmp_path_factory.mktemp("oidc")
    cert, key = td.svid("/spire/oidc", ip_addresses=["127.0.0.1"]).write(directory)
    port = free_port()
    state = DiscoveryProvider(f"https://127.0.0.1:{port}", list(td.jwks()["keys"]))
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(state))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_cluster() as server:
        yield server


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    with vault_server(tmp_path_factory.mktemp("bao")) as server:
        yield server


def client(vault: VaultServer, token: str | None = None) -> hvac.Client:
    return hvac.Client(
        url=vault.address,
        token=token,
        verify=str(vault.ca_file) if vault.ca_file else True,
    )


def jwt_login(vault: VaultServer, token: str) -> dict[str, Any]:
    return client(vault).auth.jwt.jwt_login(role="credential-broker", jwt=token)["auth"]  # type: ignore[no-any-return]


def test_jwt_auth_from_oidc_discovery_follows_a_key_rotation(
    vault: VaultServer, td: TrustDomain, provider: DiscoveryProvider, ca_file: Path
) -> None:
    """Discovery URL + CA: the broker's JWT-SVID logs in, and still does after SPIRE's next key."""
    run_vault_setup(
        vault,
        BROKER_SPIFFE_ID=BROKER_ID,
        JWT_SVID_OIDC_DISCOVERY_URL=provider.url,
        JWT_SVID_CA_FILE=str(ca_file),
    )
    path = "/ns/credential-broker/sa/credential-broker"
    token = td.jwt_svid(path, audience="vault", claims={"iss": provider.url})
    assert "credential-broker" in jwt_login(vault, token)["policies"]

    # SPIRE rotates its JWT key: the provider publishes the next one beside the current.
    next_key = new_ec_key()
    rotated = TrustDomain("example.org", jwt_key=next_key)
    provider.keys = [*td.jwks()["keys"], *rotated.jwks()["keys"]]
    token = rotated.jwt_svid(path, audience="vault", claims={"iss": provider.url})
    assert "credential-broker" in jwt_login(vault, token)["policies"]

    for wrong in (
        td.jwt_svid("/ns/agents/sa/claims-agent", audience="vault", claims={"iss": provider.url}),
        td.jwt_svid(path, audience="other", claims={"iss": provider.url}),
        td.jwt_svid(path, audience="vault", claims={"iss": "https://elsewhere.example.org"}),
    ):
        with pytest.raises(hvac.exceptions.VaultError):
            jwt_login(vault, wrong)


def test_jwt_auth_from_a_jwks_url_checks_the_issuer(
    vault: VaultServer, td: TrustDomain, provider: DiscoveryProvider, ca_file: Path
) -> None:
    """JWKS URL + CA + bound issuer: the right `iss` logs in, another is refused."""
    run_vault_setup(
        vault,
        BROKER_SPIFFE_ID=BROKER_ID,
        JWT_SVID_JWKS_URL=f"{provider.url}/keys",
        JWT_SVID_CA_FILE=str(ca_file),
        JWT_SVID_ISSUER=provider.url,
    )
    path = "/ns/credential-broker/sa/credential-broker"
    ok = td.jwt_svid(path, audience="vault", claims={"iss": provider.url})
    assert "credential-broker" in jwt_login(vault, ok)["policies"]
    bad = td.jwt_svid(path, audience="vault", claims={"iss": "https://elsewhere.example.org"})
    with pytest.raises(hvac.exceptions.VaultError):
        jwt_login(vault, bad)


def test_ambiguous_or_unbound_jwt_key_sources_are_refused(
    vault: VaultServer, provider: DiscoveryProvider
) -> None:
    """Two key sources, or a JWKS URL without the issuer to bind, are errors."""
    with pytest.raises(RuntimeError, match="set one of"):
        run_vault_setup(
            vault,
            BROKER_SPIFFE_ID=BROKER_ID,
            JWT_SVID_OIDC_DISCOVERY_URL=provider.url,
            JWT_SVID_JWKS_URL=f"{provider.url}/keys",
        )
    with pytest.raises(RuntimeError, match="JWT_SVID_ISSUER"):
        run_vault_setup(vault, BROKER_SPIFFE_ID=BROKER_ID, JWT_SVID_JWKS_URL=f"{provider.url}/keys")


def psql(
    pg: PostgresServer, user: str, password: str, sql: str
) -> subprocess.CompletedProcess[str]:
    """Run one statement as `user` (the password in the environment, never in argv)."""
    return subprocess.run(
        [
            *("psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", user, "-d", "postgres"),
            *("-w", "-v", "ON_ERROR_STOP=1", "-tAc", sql),
        ],
        env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_database_credentials_read_the_example_tables_and_nothing_more(
    vault: VaultServer, pg: PostgresServer
) -> None:
    """DB_TABLES=tickets: a dynamic credential can SELECT tickets, not write, not read others."""
    setup = (
        "CREATE TABLE IF NOT EXISTS tickets (id int PRIMARY KEY, title text);"
        "INSERT INTO tickets VALUES (1, 'printer on fire') ON CONFLICT DO NOTHING;"
        "CREATE TABLE IF NOT EXISTS payroll (id int);"
    )
    assert psql(pg, pg.admin_user, pg.admin_password, setup).returncode == 0
    run_vault_setup(
        vault,
        BROKER_SPIFFE_ID=BROKER_ID,
        PG_CONNECTION_URL=pg.url_template,
        PG_ADMIN_USER=pg.admin_user,
        PG_ADMIN_PASSWORD=pg.admin_password,
        DB_TABLES="tickets",
    )
    creds = client(vault, vault.root_token).read("database/creds/ticketing")["data"]
    user, password = creds["username"], creds["password"]
    read = psql(pg, user, password, "SELECT title FROM tickets WHERE id = 1")
    assert (read.returncode, read.stdout.strip()) == (0, "printer on fire"), read.stderr
    for sql in ("INSERT INTO tickets VALUES (2, 'x')", "SELECT * FROM payroll"):
        denied = psql(pg, user, password, sql)
        assert denied.returncode != 0
        assert "permission denied" in denied.stderr


def test_database_table_names_are_checked(vault: VaultServer, pg: PostgresServer) -> None:
    """A table list that is not plain identifiers never reaches SQL."""
    with pytest.raises(RuntimeError, match="DB_TABLES must be SQL identifiers"):
        run_vault_setup(
            vault,
            BROKER_SPIFFE_ID=BROKER_ID,
            PG_CONNECTION_URL=pg.url_template,
            PG_ADMIN_USER=pg.admin_user,
            PG_ADMIN_PASSWORD=pg.admin_password,
            DB_TABLES='tickets"; DROP TABLE tickets; --',
        )
