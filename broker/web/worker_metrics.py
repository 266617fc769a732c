"""`/metrics` under `broker serve --workers N`: every worker's samples, labelled `worker`.

Each process has its own registry, and the kernel hands a scrape to whichever worker
accepts it, so one worker's counters alone would undercount and flap. Each worker serves
its own exposition on a unix socket (0600, in a directory of the supervisor's, 0700); the
worker answering a scrape gathers the others' (a short deadline each) and renders one
exposition in which every sample carries `worker="<index>"`. `broker_worker_up` says
which workers answered: a worker that does not (starting, or gone) is left out, not
waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from broker.metrics import Metrics

__all__ = ["WorkerMetrics", "merge", "socket_path"]

SIBLING_TIMEOUT_SECONDS = 1.0


def socket_path(index: int, supervisor: int | None = None) -> Path:
    """Worker `index`'s metrics socket, in the directory of its supervisor's PID."""
    parent = supervisor if supervisor is not None else os.getppid()
    return Path(tempfile.gettempdir()) / f"broker-{parent}-metrics" / f"w{index}.sock"


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge(expositions: dict[int, str | None]) -> bytes:
    """One exposition of several workers' (None: that worker did not answer)."""
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily(
        "broker_worker_up", "Whether the worker answered this scrape", labels=["worker"]
    )
    for index, text in sorted(expositions.items()):
        up.add_metric([str(index)], 0.0 if text is None else 1.0)
        for family in text_string_to_metric_families(text or ""):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(index)}
                merged.add_sample(sample.name, labels, sample.value, sample.timestamp)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([*families.values(), up]))
    return generate_latest(registry)


class WorkerMetrics:
    """This worker's socket, and the gathering of every worker's exposition."""

    def __init__(
        self, metrics: Metrics, index: int, count: int, *, supervisor: int | None = None
    ) -> None:
        """Serve `metrics` as worker `index` of `count` (call `start`).

        `supervisor` names the set (default: this process's parent, the supervisor).
        """
        self._metrics = metrics
        self._index = index
        self._count = count
        self._supervisor = supervisor if supervisor is not None else os.getppid()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on this worker's socket.

        Raises:
            OSError: The socket cannot be created.
        """
        path = socket_path(self._index, self._supervisor)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a worker of this supervisor that died
        app = web.Application()
        app.router.add_get("/metrics", self._own)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(path)).start()
        path.chmod(0o600)

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        path = socket_path(self._index, self._supervisor)
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the last worker out removes the directory

    async def _own(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition())

    async def exposition(self) -> bytes:
        """Every worker's samples, this one's read directly."""
        others = [i for i in range(self._count) if i != self._index]
        texts = await asyncio.gather(*(_fetch(socket_path(i, self._supervisor)) for i in others))
        expositions: dict[int, str | None] = dict(zip(others, texts, strict=True))
        expositions[self._index] = self._metrics.exposition().decode()
        return merge(expositions)


async def _fetch(path: Path) -> str | None:
    timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT_SECONDS)
    connector = aiohttp.UnixConnector(path=str(path))
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get("http://worker/metrics") as response,
        ):
            if response.status != 200:  # noqa: PLR2004
                return None
            return await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None
