"""A small OpenBao for issuer tests: kv, child tokens and a leased PKI role, no PostgreSQL.

Ready in well under a second (the `vault_env` of tests/integration/test_vault.py also
starts PostgreSQL and runs the project's setup script; contract tests need neither).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hvac

from tests.support import leaks
from tests.support.servers import VaultServer, vault_server

KV_PATH = "tools/contract"
PKI_ROLE_PATH = "pki/issue/agents"


@dataclass
class IssuerVault:
    server: VaultServer
    root: hvac.Client
    token_file: Path  # the broker's static token (`auth.method: token`)

    def inventory(self) -> set[str]:
        """Every token accessor and every PKI lease that exists now (to spot leftovers)."""
        accessors = self.root.list("auth/token/accessors")["data"]["keys"]
        try:
            leases = self.root.sys.list_leases(PKI_ROLE_PATH)["data"]["keys"]
        except hvac.exceptions.InvalidPath:  # no lease under the role yet
            leases = []
        return {f"accessor:{a}" for a in accessors} | {f"lease:{lease}" for lease in leases}


@contextmanager
def issuer_vault(directory: Path) -> Iterator[IssuerVault]:
    """OpenBao dev server: a KV v2 secret, and a PKI role leasing 60 s certificates."""
    with vault_server(directory) as server:
        root = hvac.Client(
            url=server.address,
            token=server.root_token,
            verify=str(server.ca_file) if server.ca_file else True,
        )
        value = secrets.token_urlsafe(24)
        leaks.remember(value)
        root.secrets.kv.v2.create_or_update_secret(
            path=KV_PATH, secret={"api_key": value}, mount_point="secret"
        )
        if "pki/" not in root.sys.list_mounted_secrets_engines():
            root.sys.enable_secrets_engine("pki", path="pki", config={"max_lease_ttl": "24h"})
        root.write("pki/root/generate/internal", common_name="contract root", ttl="24h")
        root.write(
            "pki/roles/agents", allow_any_name=True, ttl="60s", max_ttl="1h", generate_lease=True
        )
        token_file = directory / "broker-token"
        token_file.write_text(server.root_token)
        try:
            yield IssuerVault(server, root, token_file)
        finally:
            if server.pid is not None:
                _stop_child(server.pid)


def _stop_child(pid: int) -> None:
    """Stop and reap our own child (a zombie would hold up the PID-polling stop for 10 s)."""
    os.kill(pid, signal.SIGCONT)  # a frozen server would not act on SIGTERM
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
