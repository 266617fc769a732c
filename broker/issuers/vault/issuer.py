"""Credentials of `type: vault` tools: fetched from Vault per execution.

- `dynamic`: read a credentials path (database, AWS, ...); the lease is shortened to the
  granted TTL (Vault's default would be the role's, or 32 days) and verified: a lease
  that stays longer than granted is revoked and the request fails.
- `token`: a child token with the tool's policies, `ttl` = `explicit_max_ttl` = the
  granted TTL, optional `num_uses`, not renewable, with metadata naming the agent, the
  user and the decision, so Vault's own audit log shows the attribution too.
- `kv`: a KV v2 secret, read response-wrapped: the broker never sees the secret, the agent
  gets a single-use wrapping token whose TTL is the granted TTL.

Every lease (or token accessor) is written to the state store as soon as Vault returns it,
before anything else can fail, so the reconciler can always find and revoke it.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import hvac
from hvac import exceptions as vault_errors

from broker.audit import LeaseHasher
from broker.domain import Credential, Secret
from broker.errors import BrokerError, Unavailable
from broker.issuers.base import IssueRequest
from broker.issuers.vault.config import VaultToolSettings
from broker.state.base import CredentialRecord
from broker.typing import Clock, StateStore
from broker.vault.client import VaultClient

__all__ = ["VaultIssuer"]


def _gone(exc: vault_errors.VaultError) -> bool:
    text = str(exc).lower()
    return any(
        s in text for s in ("invalid accessor", "not found", "invalid lease", "lease not found")
    )


class VaultIssuer:
    """Issues and revokes Vault credentials."""

    kind = "vault"

    def __init__(
        self, client: VaultClient, state: StateStore, hasher: LeaseHasher, clock: Clock
    ) -> None:
        """Create the issuer.

        Args:
            client: The authenticated Vault client.
            state: Where leases are recorded at once (for the reconciler).
            hasher: Keyed hash of lease ids for the audit trail.
            clock: For expiries.
        """
        self._vault = client
        self._state = state
        self._hash = hasher
        self._clock = clock

    async def issue(self, request: IssueRequest) -> Credential:
        """Fetch one credential from Vault.

        Raises:
            Unavailable: Vault is down or refused; nothing is left behind.
        """
        settings = request.tool.options
        assert isinstance(settings, VaultToolSettings)  # parsed by this kind's factory
        if settings.kind == "dynamic":
            return await self._dynamic(request, settings)
        if settings.kind == "token":
            return await self._token(request, settings)
        return await self._kv(request, settings)

    async def _remember(self, request: IssueRequest, credential_id: str, expires_at: float) -> None:
        ctx = request.ctx
        record = CredentialRecord(
            credential_id=credential_id,
            tool=request.tool.name,
            type=self.kind,
            agent=ctx.caller.spiffe_id,
            user=ctx.user.ref if ctx.user else None,
            decision_id=request.decision.decision_id,
            issued_at=ctx.now.timestamp(),
            expires_at=expires_at,
            lease_id=credential_id,
        )
        try:
            await self._state.put_credentials([record])
        except BrokerError:
            await self._discard(credential_id)
            raise

    async def _discard(self, credential_id: str) -> None:
        """Abandon a credential this issuer just took: revoked in the state and in Vault."""
        with contextlib.suppress(BrokerError):
            await self._state.revoke_credential(credential_id)
        try:
            await self.revoke(credential_id)
        except BrokerError:
            return  # recorded as revoked: the reconciler revokes it in Vault later
        with contextlib.suppress(BrokerError):
            await self._state.lease_released(credential_id)

    def _credential(
        self, request: IssueRequest, credential_id: str, expires_at: float, data: dict[str, object]
    ) -> Credential:
        return Credential(
            tool=request.tool.name,
            type=self.kind,
            credential_id=credential_id,
            expires_at=datetime.fromtimestamp(expires_at, UTC),
            data=tuple((k, Secret(str(v))) for k, v in data.items() if v is not None),
            audit_id=self._hash(credential_id),
            lease_id=credential_id,
        )

    async def _dynamic(self, request: IssueRequest, settings: VaultToolSettings) -> Credential:
        path = settings.path
        assert path is not None
        params = dict(settings.params)
        if settings.method == "write":
            secret = await self._vault.call(
                lambda c: c.write_data(path, data=params), what=f"write {path}"
            )
        else:
            secret = await self._vault.call(lambda c: c.read(path), what=f"read {path}")
        if not isinstance(secret, dict) or not secret.get("lease_id"):
            raise Unavailable(
                f"Vault returned no lease for tool {request.tool.name}", reason="vault_error"
            )
        lease_id, duration = str(secret["lease_id"]), int(secret.get("lease_duration") or 0)
        now = self._clock.time()
        await self._remember(request, lease_id, now + max(duration, request.ttl))
        try:
            if duration > request.ttl and secret.get("renewable"):
                renewed = await self._vault.call(
                    lambda c: c.sys.renew_lease(lease_id=lease_id, increment=request.ttl),
                    what="shorten lease",
                )
                duration = int(renewed.get("lease_duration") or duration)
            if duration > request.ttl or duration <= 0:
                raise Unavailable(
                    f"Vault granted tool {request.tool.name} a lease of {duration} s, longer than "
                    f"the {request.ttl} s allowed; it was revoked",
                    reason="vault_lease_too_long",
                )
        except BrokerError:
            await self._discard(lease_id)
            raise
        await self._remember(request, lease_id, now + duration)
        return self._credential(request, lease_id, now + duration, dict(secret.get("data") or {}))

    async def _token(self, request: IssueRequest, settings: VaultToolSettings) -> Credential:
        ctx = request.ctx
        metadata = {
            "agent": ctx.caller.spiffe_id,
            "user": str(ctx.user.ref) if ctx.user else "",
            "decision_id": request.decision.decision_id,
            "tool": request.tool.name,
        }
        ttl = f"{request.ttl}s"

        def create(client: hvac.Client) -> dict[str, object]:
            return client.auth.token.create(  # type: ignore[no-any-return]
                policies=list(settings.policies),
                ttl=ttl,
                explicit_max_ttl=ttl,
                num_uses=settings.num_uses,
                renewable=False,
                meta=metadata,
                display_name=f"broker-{request.tool.name}",
                role_name=settings.role,
            )

        created = await self._vault.call(create, what="create child token")
        auth = created.get("auth") if isinstance(created, dict) else None
        if not isinstance(auth, dict):
            raise Unavailable(
                f"Vault returned no token for tool {request.tool.name}", reason="vault_error"
            )
        accessor = str(auth["accessor"])
        expires = self._clock.time() + int(auth.get("lease_duration") or request.ttl)
        await self._remember(request, accessor, expires)
        return self._credential(request, accessor, expires, {"token": auth["client_token"]})

    async def _kv(self, request: IssueRequest, settings: VaultToolSettings) -> Credential:
        path = f"{settings.mount}/data/{settings.path}"
        wrap_ttl = f"{request.ttl}s"
        wrapped = await self._vault.call(
            lambda c: c.read(path, wrap_ttl=wrap_ttl), what=f"read {path} wrapped"
        )
        info = wrapped.get("wrap_info") if isinstance(wrapped, dict) else None
        if not isinstance(info, dict):
            raise Unavailable(
                f"Vault did not wrap the secret of tool {request.tool.name}", reason="vault_error"
            )
        accessor = str(info["accessor"])
        expires = self._clock.time() + int(info.get("ttl") or request.ttl)
        await self._remember(request, accessor, expires)
        return self._credential(request, accessor, expires, {"wrapping_token": info["token"]})

    def audit_id(self, credential_id: str) -> str:
        """Lease ids and accessors are secrets to Vault: the audit trail keeps an HMAC."""
        return self._hash(credential_id)

    async def revoke(self, credential_id: str) -> None:
        """Revoke a lease (ids with a path) or a token by its accessor; gone is fine.

        Raises:
            Unavailable: Vault cannot be reached (the reconciler retries later).
        """
        if "/" in credential_id:

            def revoke(client: hvac.Client) -> None:
                try:
                    client.sys.revoke_lease(lease_id=credential_id)
                except vault_errors.InvalidRequest as exc:
                    if not _gone(exc):
                        raise

        else:

            def revoke(client: hvac.Client) -> None:
                try:
                    client.auth.token.revoke_accessor(credential_id)
                except (vault_errors.InvalidRequest, vault_errors.Forbidden) as exc:
                    if not _gone(exc):
                        raise

        await self._vault.call(revoke, what="revoke")
