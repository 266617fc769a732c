"""Every extension point of the broker, as one `Protocol` each, in one module.

Implementations live in sibling modules under a folder named for the Protocol
(`broker/identity/files.py`, `broker/identity/workload_api.py`, ...). Shared contract
test suites in `tests/` run against every implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from broker.identity.material import IdentitySnapshot

__all__ = ["Clock", "IdentitySource", "SnapshotListener"]

SnapshotListener = Callable[["IdentitySnapshot"], None]


class Clock(Protocol):
    """The wall clock. Injected everywhere time matters; tests use a manual clock."""

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        ...

    def time(self) -> float:
        """Return the current time as seconds since the epoch."""
        ...


class IdentitySource(Protocol):
    """Supplies the broker's own X.509-SVID and the trust bundles, and their rotations."""

    async def start(self) -> None:
        """Load the first material; returns once it is available.

        Raises:
            IdentityError: No usable material could be obtained.
        """
        ...

    async def close(self) -> None:
        """Stop watching for updates and release resources."""
        ...

    def snapshot(self) -> IdentitySnapshot:
        """Return the current material.

        Raises:
            IdentityError: The source has no usable material.
        """
        ...

    def ready(self) -> bool:
        """Whether current, unexpired material is loaded."""
        ...

    def subscribe(self, listener: SnapshotListener) -> None:
        """Call `listener` on the event loop with each new snapshot (after a rotation)."""
        ...

    async def fetch_jwt_svid(self, audience: str) -> str:
        """Return a JWT-SVID of the broker for `audience` (used to log in to Vault).

        Raises:
            IdentityError: The source cannot mint JWT-SVIDs.
        """
        ...
