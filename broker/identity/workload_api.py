"""Identity from the SPIFFE Workload API (a SPIRE agent), through py-spiffe.

py-spiffe is synchronous and threaded: its sources block until the first update and call
back from gRPC threads. Here they are built in a worker thread, and their callbacks only
schedule a refresh on the event loop, which reads a coherent snapshot from the sources.
py-spiffe retries transient stream errors itself; a source it closes after a permanent
error is rebuilt by a supervisor task with backoff, while the last good material (until it
expires) keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from spiffe import JwtSource, SpiffeId, WorkloadApiClient, X509Source, X509Svid
from spiffe.errors import PySpiffeError

from broker.identity.config import WorkloadApiSettings
from broker.identity.material import (
    IdentityError,
    IdentitySnapshot,
    PublicKey,
    TrustBundle,
    build_snapshot,
)
from broker.tasks import stop_task
from broker.typing import Clock, SnapshotListener

if TYPE_CHECKING:
    from broker.config.settings import Settings

__all__ = ["WorkloadApiIdentitySource"]

log = structlog.get_logger(__name__)

_SUPERVISE_SECONDS = 1.0
_MAX_BACKOFF_SECONDS = 30.0


class WorkloadApiIdentitySource:
    """An `IdentitySource` fed by the SPIFFE Workload API."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        """Create the source (nothing is contacted until `start`).

        Args:
            settings: The broker settings; `identity.workload_api` must be set.
            clock: For expiry checks.
        """
        api = settings.identity.workload_api
        if api is None:
            raise IdentityError("identity.workload_api is not configured")
        self._settings = settings
        self._api: WorkloadApiSettings = api
        self._clock = clock
        self._socket = api.socket or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
        self._client: Any = None
        self._x509: Any = None
        self._jwt: Any = None
        self._snapshot: IdentitySnapshot | None = None
        self._listeners: list[SnapshotListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    # -- connection ---------------------------------------------------------------------

    def _pick(self, svids: Sequence[X509Svid]) -> X509Svid:
        """Pick our configured SPIFFE ID among the SVIDs the agent offers."""
        for svid in svids:
            if str(svid.spiffe_id) == self._settings.spiffe_id:
                return svid
        offered = ", ".join(str(s.spiffe_id) for s in svids) or "none"
        raise IdentityError(
            f"the Workload API offers no SVID for {self._settings.spiffe_id} (offered: {offered})"
        )

    def _build(self) -> tuple[Any, Any, Any]:
        """Connect and wait for the first X.509 and JWT updates (blocking)."""
        client = WorkloadApiClient(
            socket_path=self._socket, default_timeout=self._api.timeout_seconds
        )
        try:
            x509_source = X509Source(
                workload_api_client=client,
                timeout_in_seconds=self._api.timeout_seconds,
                svid_picker=self._pick,
            )
        except BaseException:
            client.close()
            raise
        try:
            jwt_source = JwtSource(
                workload_api_client=client, timeout_in_seconds=self._api.timeout_seconds
            )
        except BaseException:
            x509_source.close()
            client.close()
            raise
        return client, x509_source, jwt_source

    async def _connect(self) -> None:
        if not self._socket:
            raise IdentityError(
                "no Workload API socket: set identity.workload_api.socket or SPIFFE_ENDPOINT_SOCKET"
            )
        try:
            client, x509_source, jwt_source = await asyncio.to_thread(self._build)
        except (PySpiffeError, IdentityError, OSError, ValueError) as exc:
            raise IdentityError(f"Workload API at {self._socket}: {_describe(exc)}") from None
        self._client, self._x509, self._jwt = client, x509_source, jwt_source
        x509_source.subscribe_for_updates(self._on_update)
        jwt_source.subscribe_for_updates(self._on_update)
        self._refresh()
        if self._snapshot is None:
            raise IdentityError(f"Workload API at {self._socket}: no usable identity material")

    def _on_update(self) -> None:
        """Called from a py-spiffe thread: hop onto the event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._refresh)

    def _refresh(self) -> None:
        """Read a coherent snapshot from the sources and publish it if it changed."""
        if self._x509 is None or self._jwt is None:
            return
        try:
            context = self._x509.get_x509_context()
            jwt_bundles = self._jwt.bundles
        except PySpiffeError as exc:
            log.warning("Workload API source not readable", reason=_describe(exc))
            return
        svid = context.default_svid
        x509_by_td = {
            b.trust_domain.name: tuple(b.x509_authorities) for b in context.x509_bundle_set.bundles
        }
        jwt_by_td: dict[str, dict[str, PublicKey]] = {
            b.trust_domain.name: dict(b.jwt_authorities) for b in jwt_bundles
        }
        bundles = {
            td: TrustBundle(td, x509_by_td.get(td, ()), jwt_by_td.get(td, {}))
            for td in set(x509_by_td) | set(jwt_by_td)
        }
        try:
            snapshot = build_snapshot(
                chain=list(svid.cert_chain),
                private_key=svid.private_key,
                bundles=bundles,
                expected_spiffe_id=self._settings.spiffe_id,
                trust_domain=self._settings.trust_domain,
                accepted_domains=self._settings.trusted_domains,
            )
        except IdentityError as exc:
            log.error(  # noqa: TRY400 - the reason is the message; a traceback adds nothing
                "Workload API update rejected; keeping previous material", reason=str(exc)
            )
            return
        previous = self._snapshot
        if previous is not None and previous.fingerprint == snapshot.fingerprint:
            return
        self._snapshot = snapshot
        log.info(
            "identity loaded" if previous is None else "identity rotated",
            source="workload_api",
            spiffe_id=snapshot.svid.spiffe_id,
            not_after=snapshot.svid.not_after.isoformat(),
        )
        if previous is not None:
            for listener in list(self._listeners):
                listener(snapshot)

    async def _supervise(self) -> None:
        """Rebuild the sources if py-spiffe closed them after a permanent error."""
        backoff = _SUPERVISE_SECONDS
        while True:
            await asyncio.sleep(_SUPERVISE_SECONDS)
            if not self._closed():
                backoff = _SUPERVISE_SECONDS
                continue
            log.warning("Workload API source closed; reconnecting", socket=self._socket)
            await self._release()
            try:
                await self._connect()
            except IdentityError as exc:
                log.error(  # noqa: TRY400 - the reason is the message
                    "Workload API reconnect failed", reason=str(exc), retry_in=backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    def _closed(self) -> bool:
        return (
            self._x509 is None
            or self._jwt is None
            or bool(self._x509.is_closed())
            or bool(self._jwt.is_closed())
        )

    async def _release(self) -> None:
        sources = [s for s in (self._x509, self._jwt, self._client) if s is not None]
        self._x509 = self._jwt = self._client = None

        def close_all() -> None:
            for source in sources:
                with contextlib.suppress(Exception):
                    source.close()

        await asyncio.to_thread(close_all)

    # -- IdentitySource -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect and wait for the first material.

        Raises:
            IdentityError: The Workload API is unreachable or offers no usable SVID.
        """
        self._loop = asyncio.get_running_loop()
        await self._connect()
        self._task = asyncio.create_task(self._supervise(), name="identity-workload-api")

    async def close(self) -> None:
        """Stop the supervisor and close the sources."""
        await stop_task(self._task)
        self._task = None
        await self._release()

    def snapshot(self) -> IdentitySnapshot:
        """Return the current material."""
        if self._snapshot is None:
            raise IdentityError("identity material is not loaded")
        return self._snapshot

    def ready(self) -> bool:
        """Whether material is loaded and the SVID has not expired."""
        return self._snapshot is not None and self._snapshot.svid.not_after > self._clock.now()

    def subscribe(self, listener: SnapshotListener) -> None:
        """Call `listener` with each new snapshot."""
        self._listeners.append(listener)

    async def fetch_jwt_svid(self, audience: str) -> str:
        """Fetch a JWT-SVID for the broker's own SPIFFE ID.

        Raises:
            IdentityError: The Workload API refused or is unreachable.
        """
        client = self._client
        if client is None:
            raise IdentityError("the Workload API is not connected")
        subject = SpiffeId(self._settings.spiffe_id)
        try:
            svid = await asyncio.to_thread(
                client.fetch_jwt_svid, {audience}, subject, self._api.timeout_seconds
            )
        except PySpiffeError as exc:
            raise IdentityError(f"cannot fetch a JWT-SVID: {_describe(exc)}") from None
        token: str = svid.token
        return token


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
