"""The token verifier contract, run against every implementation: the JWT issuer (both algorithms).

The JWT issuer is the one `TokenVerifier` today (it verifies what it minted); it is
opened through its factory, once per signing algorithm it supports.
Promises: `verify()` returns the claims of its own fresh token (with its `iss`), and
None for anything else: an expired token, a token of another broker (another key, same
`iss`), a tampered one, an unsigned one; `jwks()` publishes the kid in the token's
header (public members only) and `algorithms` its `alg`.
No failure case with a backend: verification is in memory, with keys from a local file
(what happens when a key leaves that file is in test_issuer.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import jwt
import pytest

from broker.typing import TokenVerifier
from tests.support.broker import Identity
from tests.support.clock import ManualClock
from tests.support.issuers import issue_request, open_issuer

TTL = 60
ALGORITHMS = ["EdDSA", "ES256"]


@dataclass
class Harness:
    verifier: TokenVerifier
    mint: Callable[[], Awaitable[str]]  # a fresh token of this verifier's issuer


@asynccontextmanager
async def jwt_issuer(
    identity: Identity, clock: ManualClock, algorithm: str, name: str = "issuer"
) -> AsyncIterator[Harness]:
    """The JWT issuer with its own key file, as a verifier and a way to mint its tokens."""
    settings = identity.settings(
        jwt_issuer={
            "keys_file": str(identity.directory / f"{name}-keys.json"),
            "algorithm": algorithm,
            "issuer": "https://broker.example.org",
        },
        tools={"docs": {"type": "jwt", "audience": "https://docs.example.org"}},
    )
    async with open_issuer("jwt", settings, clock, identity.directory) as opened:
        verifier = opened.parts.token_verifier
        assert verifier is not None

        async def mint() -> str:
            credential = await opened.parts.issuer.issue(
                issue_request(settings, clock, "docs", TTL)
            )
            assert credential.secret is not None
            return credential.secret.reveal()

        yield Harness(verifier, mint)


@pytest.fixture(params=ALGORITHMS)
async def harness(
    request: pytest.FixtureRequest, identity: Identity, clock: ManualClock
) -> AsyncIterator[Harness]:
    """Each implementation (the JWT issuer, per signing algorithm), opened by its factory."""
    async with jwt_issuer(identity, clock, request.param) as opened:
        yield opened


def header(token: str) -> dict[str, object]:
    return dict(jwt.get_unverified_header(token))


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_own_fresh_token_verifies(harness: Harness) -> None:
    """verify() returns the claims of a fresh token of its own issuer."""
    token = await harness.mint()
    claims = harness.verifier.verify(token)
    assert claims is not None
    assert claims["iss"] == harness.verifier.issuer
    assert isinstance(claims["jti"], str)


async def test_expired_token_does_not_verify(harness: Harness, clock: ManualClock) -> None:
    """verify() returns None once the token has expired."""
    token = await harness.mint()
    clock.advance(TTL + 1)
    assert harness.verifier.verify(token) is None


async def test_another_brokers_token_does_not_verify(
    harness: Harness, identity: Identity, clock: ManualClock
) -> None:
    """verify() returns None for a token of another broker (own keys, same iss)."""
    token = await harness.mint()
    alg = str(header(token)["alg"])
    async with jwt_issuer(identity, clock, alg, name="other") as other:
        foreign = await other.mint()
        assert other.verifier.verify(foreign) is not None
    assert harness.verifier.verify(foreign) is None


async def test_tampered_or_unsigned_token_does_not_verify(harness: Harness) -> None:
    """verify() returns None for a token with altered claims or without a signature."""
    token = await harness.mint()
    head, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["scope"] = "admin"
    assert harness.verifier.verify(f"{head}.{b64(claims)}.{signature}") is None
    unsigned = {**header(token), "alg": "none"}
    assert harness.verifier.verify(f"{b64(unsigned)}.{body}.") is None
    assert harness.verifier.verify("not a token") is None


async def test_jwks_publishes_the_tokens_key(harness: Harness) -> None:
    """jwks() holds the kid of the token's header (public members only); algorithms its alg."""
    token = await harness.mint()
    keys = harness.verifier.jwks()["keys"]
    assert isinstance(keys, list)
    published = {str(k["kid"]): k for k in keys}
    assert header(token)["kid"] in published
    assert all("d" not in k for k in keys)
    assert header(token)["alg"] in harness.verifier.algorithms
