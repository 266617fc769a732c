"""The `vault:` section: how the broker reaches and authenticates to Vault (or OpenBao)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from broker.config.reader import Reader

__all__ = ["VaultAuth", "VaultSettings", "parse_vault"]


class VaultAuth(StrEnum):
    """How the broker logs in to Vault."""

    CERT = "cert"  # TLS client certificate: the broker's X.509-SVID
    JWT = "jwt"  # a JWT-SVID of the broker
    TOKEN = "token"  # noqa: S105 - a static token from a file (development only)


@dataclass(frozen=True, slots=True)
class VaultSettings:
    """How the broker reaches and authenticates to Vault.

    Attributes:
        address: `https://` URL of Vault.
        ca_file: CA bundle that signed Vault's certificate (default: the system's).
        namespace: Vault Enterprise namespace, if any.
        auth_method: `cert` (mTLS with the broker's X.509-SVID), `jwt` (a JWT-SVID), or
            `token` (a static token from `token_file`: development only).
        auth_mount: Mount path of the auth method.
        auth_role: Role to log in as (`cert`: the certificate role; `jwt`: the role).
        jwt_audience: Audience of the JWT-SVID the broker presents (`jwt`).
        token_file: File holding a static token (`token`).
        timeout_seconds: Deadline of every Vault call.
        pool_size: Threads running hvac calls.
        breaker_failures: Consecutive failures that open the circuit breaker.
        breaker_reset_seconds: How long the breaker stays open before a trial call.
        reconcile_seconds: Interval of the lease reconciler.
        orphan_grace_seconds: How old a credential Vault holds under a tool's path must
            be, unknown to the state store, before the reconciler revokes it as orphaned
            (created by a request whose answer the broker never saw). Longer than any
            issuance takes from Vault's answer to the state store's record.
        orphan_sweep_seconds: Interval of the orphan sweep when nothing failed (it also
            runs at start-up and after every Vault call that went unanswered); 0 turns
            the sweep off (only for tools whose Vault roles other clients share).
    """

    address: str
    auth_method: VaultAuth
    auth_mount: str
    ca_file: Path | None = None
    namespace: str | None = None
    auth_role: str | None = None
    jwt_audience: str = "vault"
    token_file: Path | None = None
    timeout_seconds: float = 2.0
    pool_size: int = 8
    breaker_failures: int = 5
    breaker_reset_seconds: float = 10.0
    reconcile_seconds: float = 30.0
    orphan_grace_seconds: float = 60.0
    orphan_sweep_seconds: float = 3600.0


_D = VaultSettings("https://-", VaultAuth.TOKEN, "token")  # the defaults, written once above


def parse_vault(reader: Reader) -> VaultSettings:
    """Parse the `vault:` section.

    Raises:
        ConfigError: Naming the file and the key.
    """
    address = reader.url("address")
    auth = reader.section("auth", required=True)
    method = VaultAuth(auth.string("method", choices=tuple(VaultAuth)))
    vault = VaultSettings(
        address=address.rstrip("/"),
        ca_file=reader.optional_path("ca_file"),
        namespace=reader.optional_string("namespace"),
        auth_method=method,
        auth_mount=auth.string("mount", method.value),
        auth_role=auth.optional_string("role")
        if method is VaultAuth.TOKEN
        else auth.string("role"),
        jwt_audience=auth.string("audience", _D.jwt_audience),
        token_file=auth.path("token_file")
        if method is VaultAuth.TOKEN
        else auth.optional_path("token_file"),
        timeout_seconds=reader.number(
            "timeout_seconds", _D.timeout_seconds, minimum=0.1, maximum=60
        ),
        pool_size=reader.integer("pool_size", _D.pool_size, minimum=1, maximum=256),
        breaker_failures=reader.integer(
            "breaker_failures", _D.breaker_failures, minimum=1, maximum=1000
        ),
        breaker_reset_seconds=reader.number(
            "breaker_reset_seconds", _D.breaker_reset_seconds, minimum=0.1, maximum=3600
        ),
        reconcile_seconds=reader.number(
            "reconcile_seconds", _D.reconcile_seconds, minimum=0.1, maximum=3600
        ),
        orphan_grace_seconds=reader.number(
            "orphan_grace_seconds", _D.orphan_grace_seconds, minimum=1, maximum=86400
        ),
        orphan_sweep_seconds=reader.number(
            "orphan_sweep_seconds", _D.orphan_sweep_seconds, minimum=0, maximum=86400
        ),
    )
    auth.finish()
    reader.finish()
    return vault
