"""The running broker's parts, wired from the settings (no HTTP in here).

`open_runtime` opens every long-lived resource in order and closes them in reverse; the
web layer holds the result for the life of the application.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from broker.authn import Authenticator, create_authenticator
from broker.clock import SystemClock
from broker.config.settings import Settings
from broker.identity import create_identity_source
from broker.identity.tls import ServerTls
from broker.typing import Clock, IdentitySource

__all__ = ["Runtime", "open_runtime"]


@dataclass(slots=True)
class Runtime:
    """Everything a request needs, opened once per process."""

    settings: Settings
    clock: Clock
    identity: IdentitySource
    tls: ServerTls
    authenticator: Authenticator

    def readiness(self) -> dict[str, bool]:
        """Each dependency's readiness; the broker is ready when all are."""
        return {"identity": self.identity.ready()}


@asynccontextmanager
async def open_runtime(settings: Settings, clock: Clock | None = None) -> AsyncIterator[Runtime]:
    """Open the broker's resources for the life of the process.

    Args:
        settings: The validated configuration.
        clock: The clock (the system clock unless a test injects one).

    Yields:
        The runtime.

    Raises:
        IdentityError: No identity material could be loaded.
    """
    clock = clock or SystemClock()
    identity = create_identity_source(settings, clock)
    await identity.start()
    try:
        yield Runtime(
            settings=settings,
            clock=clock,
            identity=identity,
            tls=ServerTls(identity),
            authenticator=create_authenticator(settings, identity, clock),
        )
    finally:
        await identity.close()
