"""The broker's authenticated Vault client.

hvac is synchronous: every call runs on a bounded pool of daemon threads, under a
deadline (`timeout_seconds`, enforced by requests and again around the thread), behind a
circuit breaker. Vault down, sealed, slow or answering 5xx becomes `Unavailable` (503 with
Retry-After); Vault refusing a request becomes `Unavailable` too, with a generic detail:
Vault's own messages go to the broker's log, never to an agent.

The broker authenticates with its own SPIFFE identity:
- `cert`: the Vault `cert` auth method over mTLS with the broker's X.509-SVID;
- `jwt`: the Vault `jwt` auth method with a JWT-SVID fetched from the Workload API;
- `token`: a static token read from a file, for development only (logged loudly).
It logs in again when two thirds of the token's TTL have passed, when the SVID rotates,
and once (then retries the call) when Vault says the token is no longer valid.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import hvac
import requests
import structlog
from hvac import exceptions as vault_errors
from requests.adapters import HTTPAdapter

from broker.blocking import DaemonExecutor
from broker.errors import Unavailable
from broker.identity.material import IdentityError, IdentitySnapshot
from broker.identity.tls import load_cert_chain
from broker.tasks import stop_task
from broker.typing import Clock, IdentitySource
from broker.vault.breaker import CircuitBreaker
from broker.vault.config import VaultAuth, VaultSettings

__all__ = ["VaultClient", "VaultRefused"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

RELOGIN_FRACTION = 2 / 3
_UNREACHABLE = (
    vault_errors.VaultDown,
    vault_errors.InternalServerError,
    vault_errors.BadGateway,
    vault_errors.UnexpectedError,
    requests.exceptions.RequestException,
    OSError,
)


class VaultRefused(Unavailable):
    """Vault answered, but refused or could not serve the request (not an outage)."""


class _TlsAdapter(HTTPAdapter):
    """A requests adapter using our SSLContext (which may carry the broker's SVID)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - requests' signature
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - requests' signature
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(*args, **kwargs)


class VaultClient:
    """Logs in with the broker's SPIFFE identity and runs hvac calls safely."""

    def __init__(self, settings: VaultSettings, identity: IdentitySource, clock: Clock) -> None:
        """Create the client (nothing is contacted until `start`).

        Args:
            settings: Vault address, auth method, timeouts, breaker.
            identity: The broker's identity (SVID for `cert`, JWT-SVIDs for `jwt`).
            clock: For token expiry and the breaker.
        """
        self._settings = settings
        self._identity = identity
        self._clock = clock
        self._executor = DaemonExecutor(settings.pool_size, "vault")
        # Called with each Vault call's duration (the `vault` stage histogram).
        self.observe: Callable[[float], None] | None = None
        self.breaker = CircuitBreaker(
            "Vault",
            clock,
            failures=settings.breaker_failures,
            reset_seconds=settings.breaker_reset_seconds,
        )
        self._client: hvac.Client | None = None
        self._relogin_at = 0.0
        self._relogin_due = False
        self._login_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.logins = 0
        # Calls that timed out or lost their connection: Vault may still have acted on
        # them (created a lease or a token nobody recorded). The reconciler sweeps then.
        self.unanswered = 0
        self.last_unanswered_at = 0.0
        identity.subscribe(self._on_rotation)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Log in (an unreachable Vault only delays it) and keep the login fresh."""
        if self._settings.auth_method is VaultAuth.TOKEN:
            log.warning(
                "Vault auth method 'token' (a static token) is for development only: "
                "use 'cert' or 'jwt' so the broker authenticates with its SPIFFE identity"
            )
        try:
            await self._login()
        except Unavailable as exc:
            log.warning(
                "Vault login failed; tools of type 'vault' get 503 until it succeeds",
                reason=exc.detail,
            )
        self._task = asyncio.create_task(self._maintain(), name="vault-login")

    async def close(self) -> None:
        """Stop maintaining the login."""
        await stop_task(self._task)
        self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _on_rotation(self, _snapshot: IdentitySnapshot) -> None:
        if self._settings.auth_method is not VaultAuth.TOKEN:
            self._relogin_due = True

    async def _maintain(self) -> None:
        while True:
            await self._clock.sleep(1.0)
            if (
                self._relogin_due
                or (self._client is not None and self._clock.time() >= self._relogin_at)
                or (self._client is None and self.breaker.state != "open")
            ):
                try:
                    await self._login()
                except Unavailable as exc:
                    log.warning("Vault re-login failed; will retry", reason=exc.detail)

    # -- login ------------------------------------------------------------------------------

    def _tls_context(self, snapshot: IdentitySnapshot | None) -> ssl.SSLContext:
        ca = str(self._settings.ca_file) if self._settings.ca_file else None
        context = ssl.create_default_context(cafile=ca)
        if snapshot is not None:
            load_cert_chain(context, snapshot.svid.chain_pem(), snapshot.svid.key_pem())
        return context

    def _new_client(self, snapshot: IdentitySnapshot | None) -> hvac.Client:
        session = requests.Session()
        session.mount("https://", _TlsAdapter(self._tls_context(snapshot)))
        return hvac.Client(
            url=self._settings.address,
            session=session,
            verify=str(self._settings.ca_file) if self._settings.ca_file else True,
            timeout=self._settings.timeout_seconds,
            namespace=self._settings.namespace,
        )

    def _login_sync(
        self, snapshot: IdentitySnapshot | None, jwt_svid: str | None
    ) -> tuple[hvac.Client, float]:
        """Log in on a worker thread; returns the client and the token's TTL (0: none)."""
        settings = self._settings
        client = self._new_client(snapshot)
        path = f"/v1/auth/{settings.auth_mount}/login"
        if settings.auth_method is VaultAuth.CERT:
            response = client.adapter.login(path, json={"name": settings.auth_role})
        elif settings.auth_method is VaultAuth.JWT:
            response = client.adapter.login(
                path, json={"role": settings.auth_role, "jwt": jwt_svid}
            )
        else:
            assert settings.token_file is not None
            client.token = settings.token_file.read_text().strip()
            response = client.auth.token.lookup_self()
            return client, float(response["data"].get("ttl") or 0)
        return client, float(response["auth"]["lease_duration"] or 0)

    async def _login(self) -> None:
        async with self._login_lock:
            snapshot = (
                self._identity.snapshot() if self._settings.auth_method is VaultAuth.CERT else None
            )
            jwt_svid = None
            if self._settings.auth_method is VaultAuth.JWT:
                try:
                    jwt_svid = await self._identity.fetch_jwt_svid(self._settings.jwt_audience)
                except IdentityError as exc:
                    raise Unavailable(
                        f"cannot get a JWT-SVID for Vault: {exc}", reason="vault_unavailable"
                    ) from None
            self._relogin_due = False
            try:
                client, ttl = await self._run(
                    partial(self._login_sync, snapshot, jwt_svid), what="login"
                )
            except _TokenRejected:
                self._relogin_due = self._client is not None
                raise VaultRefused(
                    "Vault refused the broker's login", reason="vault_error"
                ) from None
            except Unavailable:
                self._relogin_due = self._client is not None
                raise
            now = self._clock.time()
            self._client = client
            self._relogin_at = now + ttl * RELOGIN_FRACTION if ttl else float("inf")
            self.logins += 1
            log.info(
                "logged in to Vault", method=self._settings.auth_method, ttl=ttl, logins=self.logins
            )

    # -- calls ------------------------------------------------------------------------------

    async def call(self, fn: Callable[[hvac.Client], T], *, what: str) -> T:
        """Run `fn(client)` on a worker thread, logged in, under the deadline and breaker.

        Raises:
            Unavailable: Vault is down, slow, sealed, or refused (`VaultRefused`).
        """
        self.breaker.check()
        if self._client is None or self._relogin_due or self._clock.time() >= self._relogin_at:
            await self._login()
        client = self._client
        assert client is not None
        try:
            return await self._run(partial(fn, client), what=what)
        except _TokenRejected:
            await self._login()  # the token was revoked or expired early: once more
            assert self._client is not None
            try:
                return await self._run(partial(fn, self._client), what=what)
            except _TokenRejected:
                raise VaultRefused(
                    f"Vault refused the broker ({what})", reason="vault_error"
                ) from None

    async def _run(self, fn: Callable[[], T], *, what: str) -> T:
        started = time.perf_counter()
        try:
            return await self._call_on_thread(fn, what=what)
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - started)

    async def _call_on_thread(self, fn: Callable[[], T], *, what: str) -> T:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._settings.timeout_seconds + 0.5):
                result = await asyncio.wrap_future(self._executor.submit(fn), loop=loop)
        except TimeoutError:
            self.breaker.failure()
            self._unanswered()
            log.warning("Vault call timed out", what=what, timeout=self._settings.timeout_seconds)
            raise Unavailable("Vault did not answer in time", reason="vault_unavailable") from None
        except vault_errors.Forbidden as exc:
            self.breaker.success()  # Vault is up; it refuses this token or request
            log.warning("Vault refused a call", what=what, error=_describe(exc))
            raise _TokenRejected from None
        except _UNREACHABLE as exc:
            self.breaker.failure()
            self._unanswered()
            log.warning("Vault call failed", what=what, error=_describe(exc))
            raise Unavailable("Vault is unavailable", reason="vault_unavailable") from None
        except vault_errors.VaultError as exc:
            self.breaker.success()
            log.warning("Vault refused a call", what=what, error=_describe(exc))
            if "missing name in alias" in str(exc):
                log.error(  # noqa: TRY400 - an operator hint; the error is logged just above
                    "Vault cert auth needs a Common Name in the broker's X.509-SVID: give the "
                    "broker's SPIRE registration entry a DNS name (SPIRE copies it into the CN)"
                )
            raise VaultRefused(
                f"Vault refused the request ({what})", reason="vault_error"
            ) from None
        self.breaker.success()
        return result

    def _unanswered(self) -> None:
        self.unanswered += 1
        self.last_unanswered_at = self._clock.time()


class _TokenRejected(Exception):
    """Vault answered 403: the broker's token is invalid or lacks a permission."""


def _describe(exc: BaseException) -> str:
    # hvac messages name the path and Vault's error strings; they carry no secret values.
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
