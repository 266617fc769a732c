"""Hot-path regression guards: what a request must not do again (counted, never timed)."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.clock import SystemClock
from broker.dev.trust_domain import mint_jwt_svid
from tests.support import leaks
from tests.support.broker import eventually
from tests.support.devbroker import DevBroker, dev_broker
from tests.support.pki import TrustDomain

ANALYTICS = {"tools": ["analytics_api"]}


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[DevBroker]:
    """The development trust domain, served in-process over real TLS."""
    async with dev_broker(tmp_path / "dev") as running:
        yield running


def bearer(broker: DevBroker) -> dict[str, str]:
    token = mint_jwt_svid(
        broker.td,
        agent="analytics",
        audience=broker.settings.spiffe_id,
        ttl=600,
        clock=SystemClock(),
    )
    leaks.remember(token)
    return {"Authorization": f"Bearer {token}"}


async def test_a_jwt_svid_is_verified_once_for_many_requests(broker: DevBroker) -> None:
    """Twenty issuances with one JWT-SVID: one full verification, nineteen cache hits."""
    authenticator = broker.running.runtime.pipeline.authenticator
    headers = bearer(broker)
    before = authenticator.verifications
    anonymous = broker.agent(None)
    for _ in range(20):
        response = await anonymous.credentials(ANALYTICS, headers=headers)
        assert response.status == 201, response.body
    assert authenticator.verifications - before == 1


async def test_a_client_certificate_is_verified_once_across_connections(
    broker: DevBroker,
) -> None:
    """Twenty issuances over twenty new mTLS connections: the chain is verified once."""
    authenticator = broker.running.runtime.pipeline.authenticator
    before = authenticator.verifications
    for _ in range(20):  # each `credentials` call opens a new connection
        assert (await broker.agent("analytics").credentials(ANALYTICS)).status == 201
    assert authenticator.verifications - before == 1


async def test_a_revoked_agent_is_refused_although_its_svid_is_cached(broker: DevBroker) -> None:
    """Revocation is checked on every request, cache hit or not."""
    headers = bearer(broker)
    anonymous = broker.agent(None)
    assert (await anonymous.credentials(ANALYTICS, headers=headers)).status == 201
    revoked = await broker.agent("admin").request(
        "POST",
        "/v1/admin/agents/revoke",
        json_body={"spiffe_id": "spiffe://example.org/agent/analytics"},
    )
    assert revoked.status == 200
    assert (await anonymous.credentials(ANALYTICS, headers=headers)).status == 401
    assert (await broker.agent("analytics").credentials(ANALYTICS)).status == 401


async def test_a_bundle_rotation_forgets_what_was_verified(broker: DevBroker) -> None:
    """A new trust bundle: the next request is verified again under it."""
    authenticator = broker.running.runtime.pipeline.authenticator
    headers = bearer(broker)
    anonymous = broker.agent(None)
    assert (await anonymous.credentials(ANALYTICS, headers=headers)).status == 201
    assert len(authenticator.cache) == 1
    # A second authority joins the bundle file (as at the start of a CA rotation).
    bundle = broker.td.ca_bundle
    bundle.write_bytes(bundle.read_bytes() + TrustDomain("example.org").bundle_pem())
    await eventually(lambda: len(authenticator.cache) == 0, within=10)
    before = authenticator.verifications
    assert (await anonymous.credentials(ANALYTICS, headers=headers)).status == 201
    assert authenticator.verifications - before == 1


async def test_an_issuance_queues_one_write_and_no_thread_work(broker: DevBroker) -> None:
    """Per issuance one write (the credential record); revocation checks are plain reads."""
    state = broker.running.runtime.state
    before = state.writes
    for _ in range(10):
        assert (await broker.agent("analytics").credentials(ANALYTICS)).status == 201
    assert state.writes - before == 10
    assert not [t for t in threading.enumerate() if "sqlite" in t.name]


async def test_concurrent_writes_share_batches(broker: DevBroker) -> None:
    """Thirty-two concurrent issuances are committed in fewer batches than requests."""
    state = broker.running.runtime.state
    headers = bearer(broker)
    anonymous = broker.agent(None)
    before_batches, before_ops = state.batches, state.writes
    responses = await asyncio.gather(
        *(anonymous.credentials(ANALYTICS, headers=headers) for _ in range(32))
    )
    assert all(r.status == 201 for r in responses)
    assert state.writes - before_ops == 32
    assert state.batches - before_batches < 32


async def test_the_listener_refuses_renegotiation(broker: DevBroker) -> None:
    """A connection's client certificate cannot change under it: renegotiation is off."""
    context = broker.running.runtime.tls.context
    assert context.options & ssl.OP_NO_RENEGOTIATION


async def test_an_exchange_reads_its_subject_token_once_and_verifies_it_once(
    broker: DevBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten exchanges of one user token: one signature check, one routing read per request."""
    from urllib.parse import urlencode

    import broker.context.builder as builder_module
    import broker.web.handlers.oauth as oauth_module
    from broker import jose

    user_token = broker.user_token("alice")
    form = urlencode(
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": user_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "audience": "customer_data_api",
        }
    )
    routing_reads: list[int] = []
    real = jose.unverified_claims

    def counting(token: str) -> dict[str, object]:
        if token == user_token:
            routing_reads.append(1)
        return real(token)

    monkeypatch.setattr(builder_module, "unverified_claims", counting)
    monkeypatch.setattr(oauth_module, "unverified_claims", counting, raising=False)
    verifier = broker.running.runtime.pipeline.context._user_tokens
    before = verifier.verifications
    claims = broker.agent("claims")
    for _ in range(10):
        response = await claims.request(
            "POST",
            "/v1/token",
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status == 200, response.body
    assert verifier.verifications - before == 1
    assert len(routing_reads) == 10
