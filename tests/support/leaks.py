"""Every secret the tests see, and every audit file and log they produce, for a final scan.

At the end of the session (`tests/conftest.py`), each watched file is searched for each
remembered secret: the issued tokens, Vault secrets, user tokens and JWT-SVIDs. A hit
fails the run: secrets must never reach an audit record or a log line.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SECRETS: set[str] = set()
FORBIDDEN_IN_AUDIT: set[str] = set()
LOGS: set[Path] = set()
AUDIT_ROOTS: set[Path] = set()


def remember(*values: object) -> None:
    """Remember secrets (a JWT also by its signature, which identifies it alone)."""
    for value in values:
        if not isinstance(value, str) or len(value) < 8:
            continue
        SECRETS.add(value)
        if value.count(".") == 2:
            SECRETS.add(value.rsplit(".", 1)[1])


def remember_response(body: object) -> None:
    """Remember the secrets in a broker response body."""
    if not isinstance(body, dict):
        return
    for credential in body.get("credentials") or []:
        remember(credential.get("token"))
        for value in (credential.get("data") or {}).values():
            remember(value)
        if credential.get("type") == "vault":
            FORBIDDEN_IN_AUDIT.add(str(credential.get("credential_id")))
    remember(body.get("access_token"))


def watch_log(path: Path) -> None:
    """Scan this log file at the end."""
    LOGS.add(path)


def watch_audit(root: Path) -> None:
    """Scan every audit file (`audit.log*`) below this directory at the end."""
    AUDIT_ROOTS.add(root)


def scan(logs: Iterable[Path], audit_roots: Iterable[Path]) -> list[str]:
    """Findings: `file: what` for every secret found where it must not be."""
    findings: list[str] = []
    audits = [
        p
        for root in audit_roots
        if root.exists()
        for p in root.rglob("audit.log*")
        if not p.name.endswith(".head")
    ]
    for path in [*logs, *audits]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        findings.extend(f"{path}: secret {s[:12]}..." for s in SECRETS if s in text)
        if path in audits:
            findings.extend(
                f"{path}: Vault lease id in clear" for s in FORBIDDEN_IN_AUDIT if s in text
            )
    return findings
