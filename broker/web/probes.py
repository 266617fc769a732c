"""What the probes and the metrics endpoint read: readiness and the exposition."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from broker.metrics import Metrics

__all__ = ["Probes"]


@dataclass(frozen=True, slots=True)
class Probes:
    """Readiness checks and metrics, for `/readyz` and `/metrics`."""

    readiness: Callable[[], Awaitable[dict[str, bool]]]
    metrics: Metrics
    # Under `--workers`: every worker's exposition (`worker_metrics`); else this one's.
    gathered: Callable[[], Awaitable[bytes]] | None = None

    async def exposition(self) -> bytes:
        """What `/metrics` answers."""
        if self.gathered is not None:
            return await self.gathered()
        return self.metrics.exposition()
