"""Domain values that flow through the pipeline: frozen, slotted, never plain dicts.

request -> `Caller` (authn) -> `RequestContext` (context) -> `Decision` (policy)
-> `Credential` (issuers) -> `AuditEvent` (audit) -> response.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = ["AuthMethod", "Caller"]


class AuthMethod(StrEnum):
    """How a caller proved its SPIFFE identity."""

    X509_SVID = "x509_svid"
    JWT_SVID = "jwt_svid"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated workload.

    Attributes:
        spiffe_id: The workload's SPIFFE ID.
        trust_domain: Its trust domain (ours or a federated one).
        method: How it authenticated.
        expires_at: When the presented SVID expires (bounds any credential's TTL).
        x509_sha256: SHA-256 of the leaf certificate (DER), lowercase hex, for mTLS callers.
        jwt_svid_jti: The JWT-SVID `jti`, when it had one.
        via_proxy: SPIFFE ID of the trusted proxy that forwarded the client certificate.
    """

    spiffe_id: str
    trust_domain: str
    method: AuthMethod
    expires_at: datetime
    x509_sha256: str | None = None
    jwt_svid_jti: str | None = None
    via_proxy: str | None = None

    @property
    def x5t_s256(self) -> str | None:
        """The RFC 8705 `x5t#S256` confirmation value (base64url, unpadded), if mTLS."""
        if self.x509_sha256 is None:
            return None
        return base64.urlsafe_b64encode(bytes.fromhex(self.x509_sha256)).rstrip(b"=").decode()
