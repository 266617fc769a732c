"""`--format template`: a user's `string.Template` file rendered with the credentials.

Variables, for each tool of `--tools` (`<tool>` with every character other than letters,
digits and `_` replaced by `_`):

    ${<tool>_token}          the token (JWT credentials)
    ${<tool>_type}           jwt, vault, ...
    ${<tool>_expires_at}     RFC 3339 expiry, as the broker sent it
    ${<tool>_credential_id}  the credential id (JWT `jti`, Vault lease id)
    ${<tool>_decision_id}    the broker's decision id
    ${<tool>_data_<field>}   a Vault credential's field (e.g. `_data_username`)

A tool without a credential (not yet issued, revoked, expired) renders as empty strings.
`$$` is a literal `$`. The template is read and checked once, at start: a placeholder that
names no tool is a usage error (exit 2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template

from broker.fileio import write_atomic
from broker.hook.errors import EXIT_USAGE, HookError
from broker.hook.model import Credential

__all__ = ["FIELDS", "TemplateFile", "variable_prefix"]

FIELDS = ("token", "type", "expires_at", "credential_id", "decision_id")


def variable_prefix(tool: str) -> str:
    """`<tool>_` as it appears in variable names."""
    return re.sub(r"\W", "_", tool, flags=re.ASCII) + "_"


class TemplateFile:
    """Renders one template into one file on every change."""

    def __init__(self, template: Template, target: Path, tools: Sequence[str]) -> None:
        """Check the template's placeholders against the tools.

        Raises:
            HookError: Invalid placeholder syntax, or a variable that names no tool (exit 2).
        """
        if not template.is_valid():
            raise HookError(EXIT_USAGE, "--template has an invalid placeholder ($ must be $$)")
        prefixes = [variable_prefix(t) for t in tools]
        unknown = sorted(name for name in template.get_identifiers() if not _known(name, prefixes))
        if unknown:
            raise HookError(
                EXIT_USAGE,
                f"--template uses unknown variables {', '.join(unknown)}; "
                f"known: <tool>_{{{','.join(FIELDS)}}} and <tool>_data_<field>",
            )
        self._template = template
        self._target = target
        self._tools = tuple(tools)

    @classmethod
    def load(cls, source: Path, target: Path, tools: Sequence[str]) -> TemplateFile:
        """Read the template file.

        Raises:
            HookError: Unreadable or invalid (exit 2).
        """
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HookError(EXIT_USAGE, f"cannot read --template {source}: {exc}") from None
        return cls(Template(text), target, tools)

    def render(self, held: Mapping[str, Credential]) -> str:
        """The template's text with these credentials."""
        values: dict[str, str] = {}
        for tool in self._tools:
            prefix = variable_prefix(tool)
            credential = held.get(tool)
            if credential is None:
                continue
            values[prefix + "token"] = credential.token or ""
            values[prefix + "type"] = credential.type
            values[prefix + "expires_at"] = str(credential.document.get("expires_at", ""))
            values[prefix + "credential_id"] = credential.credential_id
            values[prefix + "decision_id"] = credential.decision_id
            for field, value in credential.data.items():
                values[f"{prefix}data_{field}"] = value
        return self._template.substitute(
            {name: values.get(name, "") for name in self._template.get_identifiers()}
        )

    def write(self, held: Mapping[str, Credential]) -> None:
        """Render into the target file."""
        write_atomic(self._target, self.render(held).encode())


def _known(name: str, prefixes: Sequence[str]) -> bool:
    for prefix in prefixes:
        rest = name.removeprefix(prefix)
        if rest != name and (rest in FIELDS or (rest.startswith("data_") and len(rest) > 5)):  # noqa: PLR2004
            return True
    return False
