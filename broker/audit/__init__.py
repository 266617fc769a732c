"""The audit trail: every decision recorded first, hash-chained, verifiable, fail closed."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from broker.audit.file import FileAuditSink
from broker.errors import ConfigError
from broker.typing import AuditSink, Clock

if TYPE_CHECKING:
    from broker.config.settings import Settings

__all__ = ["LeaseHasher", "create_audit_sink"]

log = structlog.get_logger(__name__)


class LeaseHasher:
    """Keyed hash of Vault lease ids for the audit trail, like Vault's own audit device.

    Correlatable by whoever holds the key, useless to whoever reads the log.
    """

    def __init__(self, key: bytes) -> None:
        """Create the hasher with a secret key."""
        self._key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> LeaseHasher:
        """Read the key file, or use a per-process random key (with a warning)."""
        path = settings.audit.hmac_key_file
        if path is None:
            log.warning("audit.hmac_key_file is not set: lease HMACs change at every restart")
            return cls(secrets.token_bytes(32))
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read audit HMAC key: {exc.strerror}") from None
        if len(key) < 32:  # noqa: PLR2004
            raise ConfigError(f"{path}: audit HMAC key must be at least 32 bytes")
        return cls(key)

    def __call__(self, value: str) -> str:
        """`hmac-sha256:<hex>` of `value`."""
        return "hmac-sha256:" + hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()


def _signer(path: Path | None) -> ed25519.Ed25519PrivateKey | None:
    if path is None:
        return None
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load the audit checkpoint key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path}: the audit checkpoint key must be an Ed25519 key")
    return key


def create_audit_sink(settings: Settings, clock: Clock) -> AuditSink:
    """Build the sink the configuration names."""
    audit = settings.audit
    chain_id = audit.chain_id or os.environ.get("HOSTNAME") or socket.gethostname()
    stdout = audit.sink == "stdout"
    if stdout:
        chain_id = f"{chain_id}-{int(clock.time())}"
    return FileAuditSink(
        audit.path or Path("/dev/stdout"),
        clock,
        chain_id=chain_id,
        fsync=audit.fsync,
        write_timeout=audit.write_timeout_ms / 1000,
        max_file_bytes=audit.max_file_bytes,
        signer=_signer(audit.checkpoint_key_file),
        checkpoint_every=audit.checkpoint_every,
        stdout=stdout,
    )
