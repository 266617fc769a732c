"""Authentication of agents by X.509-SVID (mTLS) or JWT-SVID (bearer)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.authn.authenticator import Presented, SvidAuthenticator
from broker.authn.jwt_svid import JwtSvidVerifier
from broker.authn.x509 import X509SvidVerifier
from broker.typing import Clock, IdentitySource

if TYPE_CHECKING:
    from broker.config.settings import Settings

__all__ = ["Presented", "SvidAuthenticator", "create_authenticator"]


def create_authenticator(
    settings: Settings, source: IdentitySource, clock: Clock
) -> SvidAuthenticator:
    """Build the authenticator the configuration describes."""
    trusted = settings.trusted_domains
    authenticator = SvidAuthenticator(
        X509SvidVerifier(source, trusted, clock),
        JwtSvidVerifier(source, settings.authentication.jwt_svid, trusted, clock),
        settings.authentication.trusted_proxies,
        clock=clock,
    )
    # What was verified under the old trust bundles is verified again under the new ones.
    source.subscribe(lambda _snapshot: authenticator.cache.clear())
    return authenticator
