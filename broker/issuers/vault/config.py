"""A `type: vault` tool's keys (its `vault:` subsection)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from broker.config.reader import Reader

__all__ = ["VaultToolSettings", "parse_vault_tool"]

_VAULT_PATH = r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.@-]+)*"


@dataclass(frozen=True, slots=True)
class VaultToolSettings:
    """How a `type: vault` tool's credentials are made.

    Attributes:
        kind: `dynamic` (read `path`, e.g. `database/creds/ticketing`, or write it with
            `params`, e.g. `pki/issue/agents`: a leased secret),
            `token` (a child token with `policies`, through the `role` token role), or
            `kv` (the KV v2 secret at `mount`/`path`, handed over response-wrapped).
        path: The credentials path (dynamic) or the secret path in the mount (kv).
        mount: The KV v2 mount (kv).
        policies: The child token's policies (token).
        role: The token role child tokens are created through (token).
        num_uses: How many times a child token may be used; 0 for unlimited (token).
    """

    kind: Literal["dynamic", "token", "kv"]
    path: str | None = None
    method: Literal["read", "write"] = "read"
    params: tuple[tuple[str, str], ...] = ()
    mount: str = "secret"
    policies: tuple[str, ...] = ()
    role: str | None = None
    num_uses: int = 0


def parse_vault_tool(tool: Reader) -> VaultToolSettings:
    """Parse a tool's `vault:` subsection.

    Raises:
        ConfigError: Naming the file and the key.
    """
    reader = tool.section("vault", required=True)
    kind = reader.string("kind", choices=("dynamic", "token", "kv"))
    if kind == "token":
        settings = VaultToolSettings(
            kind="token",
            policies=reader.strings("policies", non_empty=True, pattern=r"[A-Za-z0-9_.-]+"),
            role=reader.optional_string("role"),
            num_uses=reader.integer("num_uses", 0, minimum=0, maximum=1_000_000),
        )
    elif kind == "dynamic":
        params = reader.section("params")
        settings = VaultToolSettings(
            kind="dynamic",
            path=reader.string("path", pattern=_VAULT_PATH),
            method=reader.string("method", "read", choices=("read", "write")),  # type: ignore[arg-type]
            params=tuple((name, params.string(name, max_length=1024)) for name in params.names()),
        )
        params.finish()
    else:
        settings = VaultToolSettings(
            kind="kv",
            path=reader.string("path", pattern=_VAULT_PATH),
            mount=reader.string("mount", "secret", pattern=r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*"),
        )
    reader.finish()
    return settings
