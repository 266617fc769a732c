"""Identity sources: where the broker's own SVID and the trust bundles come from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.identity.files import FilesIdentitySource
from broker.identity.material import IdentityError, IdentitySnapshot, ServingSvid, TrustBundle
from broker.identity.workload_api import WorkloadApiIdentitySource
from broker.typing import Clock, IdentitySource

if TYPE_CHECKING:
    from broker.config.settings import Settings

__all__ = [
    "IdentityError",
    "IdentitySnapshot",
    "ServingSvid",
    "TrustBundle",
    "create_identity_source",
]


def create_identity_source(settings: Settings, clock: Clock) -> IdentitySource:
    """Build the identity source the configuration names."""
    if settings.identity.source == "workload_api":
        return WorkloadApiIdentitySource(settings, clock)
    return FilesIdentitySource(settings, clock)
