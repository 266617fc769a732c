"""`--format env`: `KEY=value` lines, values shell-quoted, for `source`, systemd or `env $(...)`.

Names: `BROKER_CREDENTIAL_<TOOL>` holds a token; a Vault credential's fields are
`BROKER_CREDENTIAL_<TOOL>_<FIELD>` (e.g. `_USERNAME`, `_PASSWORD`); every credential also has
`BROKER_CREDENTIAL_<TOOL>_EXPIRES_AT`. `<TOOL>` and `<FIELD>` are upper-cased, and every
character other than A-Z and 0-9 becomes `_`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from broker.fileio import write_atomic
from broker.hook.model import Credential

__all__ = ["EnvFile", "env_name"]

PREFIX = "BROKER_CREDENTIAL_"


def env_name(tool: str, field: str | None = None) -> str:
    """The variable name for a tool's token (or one of its fields)."""
    name = PREFIX + tool if field is None else f"{PREFIX}{tool}_{field}"
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def render_env(held: Mapping[str, Credential]) -> str:
    """The env file's text for these credentials."""
    lines = ["# written by broker-hook: credentials, shell-quoted; do not edit"]
    for tool in sorted(held):
        credential = held[tool]
        if credential.token is not None:
            lines.append(f"{env_name(tool)}={shlex.quote(credential.token)}")
        lines.extend(
            f"{env_name(tool, field)}={shlex.quote(value)}"
            for field, value in sorted(credential.data.items())
        )
        expires = str(credential.document.get("expires_at", ""))
        lines.append(f"{env_name(tool, 'expires_at')}={shlex.quote(expires)}")
    return "\n".join(lines) + "\n"


class EnvFile:
    """The env file, rewritten whole on every change."""

    def __init__(self, path: Path) -> None:
        """Write to `path`."""
        self._path = path

    def write(self, held: Mapping[str, Credential]) -> None:
        """Replace the file's content with these credentials."""
        write_atomic(self._path, render_env(held).encode())
