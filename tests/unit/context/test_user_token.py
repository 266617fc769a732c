"""User tokens: exact issuer, audience, time, algorithms, act chain; JWKS over HTTPS cached well."""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from broker.context.config import UserTokenIssuer
from broker.context.jwks import UrlKeySet
from broker.context.user_token import UserTokenRejected, UserTokenVerifier
from broker.dev.pki import new_ec_key, new_ed25519_key
from broker.errors import Unavailable
from broker.jose import public_jwk
from tests.support.clock import ManualClock
from tests.support.pki import TrustDomain
from tests.unit.jws_forge import forge

ISSUER = "https://idp.example.org"


@dataclass
class Idp:
    """An identity provider: signing keys and a JWKS file."""

    path: Path
    keys: list[Any] = field(default_factory=lambda: [new_ed25519_key()])

    def publish(self) -> None:
        self.path.write_text(json.dumps(self.jwks()))

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k, alg="EdDSA") for k in self.keys]}

    def token(
        self,
        key_index: int = 0,
        *,
        alg: str = "EdDSA",
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": "credential-broker",
            "sub": "alice",
            "iat": now,
            "exp": now + 3600,
            "tier": "gold",
            "groups": ["support"],
        }
        body.update(claims)
        key = self.keys[key_index]
        head = {"kid": public_jwk(key, alg="EdDSA")["kid"], **(headers or {})}
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers=head
        )


@pytest.fixture
def idp(tmp_path: Path) -> Idp:
    provider = Idp(tmp_path / "jwks.json")
    provider.publish()
    return provider


def verifier(idp: Idp, clock: Any = None, **options: Any) -> UserTokenVerifier:
    issuer = UserTokenIssuer(
        issuer=ISSUER, audience=("credential-broker",), jwks_file=idp.path, **options
    )
    return UserTokenVerifier([issuer], clock or ManualClock())


async def test_valid_token_becomes_user_context(idp: Idp) -> None:
    """A good token yields issuer, subject, tier, groups and expiry."""
    user = await verifier(idp).verify(idp.token(jti="t-1"))
    assert (user.issuer, user.subject, user.tier, user.groups, user.token_id) == (
        ISSUER,
        "alice",
        "gold",
        ("support",),
        "t-1",
    )
    assert user.actors == ()


@pytest.mark.parametrize(
    ("claims", "code", "message"),
    [
        ({"exp": int(time.time()) - 100}, "user_token_expired", "expired"),
        (
            {"nbf": int(time.time()) + 600, "exp": int(time.time()) + 900},
            "user_token_invalid",
            "not valid yet",
        ),
        (
            {"iat": int(time.time()) + 600, "exp": int(time.time()) + 900},
            "user_token_invalid",
            "issued in the future",
        ),
        ({"exp": None}, "user_token_invalid", "no 'exp'"),
        ({"aud": "other"}, "user_token_wrong_audience", "'aud' does not contain"),
        ({"aud": None}, "user_token_wrong_audience", "no valid 'aud'"),
        ({"iss": "https://idp.example.org/"}, "user_token_issuer_untrusted", "is not trusted"),
        ({"iss": None}, "user_token_issuer_untrusted", "no 'iss'"),
        ({"sub": None}, "user_token_invalid", "no valid 'sub'"),
        ({"groups": "support admins"}, None, None),
        ({"groups": [1, 2]}, "user_token_invalid", "not a list of strings"),
        ({"tier": 5}, "user_token_invalid", "is not a string"),
        ({"act": {"nope": 1}}, "user_token_invalid", "'act' claim is malformed"),
    ],
)
async def test_claims_are_checked(
    idp: Idp, claims: dict[str, Any], code: str | None, message: str | None
) -> None:
    """Each claim rule rejects with its reason code (iss is matched exactly)."""
    check = verifier(idp, leeway_seconds=5)
    token = idp.token(**claims)
    if code is None:
        assert (await check.verify(token)).groups == ("support", "admins")
        return
    with pytest.raises(UserTokenRejected) as excinfo:
        await check.verify(token)
    assert excinfo.value.code == code
    assert message is not None
    assert message in excinfo.value.message


def _forged(idp: Idp, header: str | None = None, payload: str | None = None) -> str:
    """A token signed by the IdP's key whose JSON text is exactly `header`/`payload`."""
    key = idp.keys[0]
    kid = public_jwk(key, alg="EdDSA")["kid"]
    now = int(time.time())
    default = json.dumps(
        {"iss": ISSUER, "aud": "credential-broker", "sub": "alice", "iat": now, "exp": now + 600}
    )
    return forge(
        header or json.dumps({"alg": "EdDSA", "kid": kid, "typ": "JWT"}),
        payload or default,
        key,
        alg="EdDSA",
    )


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400", str(2**64), "1e300", "-1", "null"]
)
async def test_hostile_numeric_dates_are_invalid(idp: Idp, name: str, literal: str) -> None:
    """Non-finite, huge or negative exp/nbf/iat make the token invalid (403), never valid."""
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "credential-broker", "sub": "alice", "exp": now + 600, name: 0}
    text = json.dumps(body).replace(f'"{name}": 0', f'"{name}": {literal}')
    with pytest.raises(UserTokenRejected) as excinfo:
        await verifier(idp).verify(_forged(idp, payload=text))
    assert excinfo.value.code == "user_token_invalid"
    assert "NumericDate" in excinfo.value.message or "non-finite" in excinfo.value.message


async def test_duplicate_members_are_invalid(idp: Idp) -> None:
    """A second `alg`, `sub` or `iss` never overrides the first: the token is invalid."""
    kid = public_jwk(idp.keys[0], alg="EdDSA")["kid"]
    now = int(time.time())
    base = f'"aud":"credential-broker","iat":{now},"exp":{now + 600}'
    cases = [
        (f'{{"alg":"none","kid":"{kid}","alg":"EdDSA"}}', None),
        (None, f'{{"iss":"{ISSUER}","sub":"alice","sub":"admin",{base}}}'),
        (None, f'{{"iss":"https://evil.example","sub":"alice","iss":"{ISSUER}",{base}}}'),
    ]
    for header, payload in cases:
        with pytest.raises(UserTokenRejected, match="duplicate member") as excinfo:
            await verifier(idp).verify(_forged(idp, header, payload))
        assert excinfo.value.code == "user_token_invalid"


async def test_user_token_is_parsed_once(idp: Idp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issuer routing, key choice and signature use one parse: no second decode in PyJWT."""
    calls: list[int] = []
    real = base64.urlsafe_b64decode

    def counting(data: Any) -> bytes:
        calls.append(1)
        return real(data)

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("PyJWT must not parse the token again")

    token = idp.token()
    check = verifier(idp)
    assert (await check.verify(idp.token(jti="warm-up"))).subject == "alice"  # keys loaded
    monkeypatch.setattr(base64, "urlsafe_b64decode", counting)
    monkeypatch.setattr(jwt, "decode", forbidden)
    monkeypatch.setattr(jwt.api_jws.PyJWS, "decode_complete", forbidden)
    assert (await check.verify(token)).subject == "alice"
    assert len(calls) == 3  # header, payload, signature: once each


async def test_algorithms_outside_the_allow_list_are_refused(idp: Idp) -> None:
    """HS256 and `none` are never accepted; an asymmetric alg not configured is refused too."""
    check = verifier(idp, algorithms=("EdDSA",))
    hmac = jwt.encode(
        {"iss": ISSUER, "sub": "a", "aud": "credential-broker", "exp": 4102444800},
        "s" * 32,
        algorithm="HS256",
    )
    with pytest.raises(UserTokenRejected, match="algorithm 'HS256' is not allowed"):
        await check.verify(hmac)
    es = new_ec_key()
    idp.keys.append(es)
    token = jwt.encode(
        {"iss": ISSUER, "sub": "a", "aud": "credential-broker", "exp": 4102444800},
        es,
        algorithm="ES256",
        headers={"kid": "x"},
    )
    with pytest.raises(UserTokenRejected, match="algorithm 'ES256' is not allowed"):
        await check.verify(token)


async def test_forbidden_headers_and_foreign_keys(idp: Idp) -> None:
    """A `jku` header or a key outside the issuer's set is refused."""
    check = verifier(idp)
    with pytest.raises(UserTokenRejected, match="header 'jku' is not allowed"):
        await check.verify(idp.token(headers={"jku": "https://evil/jwks"}))
    stranger = Idp(idp.path.with_name("other.json"))
    with pytest.raises(UserTokenRejected, match=r"no key with kid '[^']+' in the issuer's key set"):
        await check.verify(stranger.token())


async def test_act_chain_is_read_least_recent_first(idp: Idp) -> None:
    """`act` nesting: outermost is the most recent actor."""
    act = {"sub": "spiffe://x/agent/b", "act": {"sub": "spiffe://x/agent/a"}}
    user = await verifier(idp).verify(idp.token(act=act))
    assert user.actors == ("spiffe://x/agent/a", "spiffe://x/agent/b")


# -- JWKS over HTTPS ------------------------------------------------------------------------


@dataclass
class JwksServer:
    url: str
    ca: Path
    document: dict[str, Any]
    status: int = 200
    hits: int = 0


@pytest.fixture
async def jwks_server(tmp_path: Path, idp: Idp) -> AsyncIterator[JwksServer]:
    """A real HTTPS server publishing the IdP's JWKS (certificate from a run-time CA)."""
    td = TrustDomain("idp.test")
    cert = td.svid("/jwks", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    cert_path, key_path = cert.write(tmp_path / "tls")
    (tmp_path / "ca.pem").write_bytes(td.bundle_pem())
    state = JwksServer("", tmp_path / "ca.pem", idp.jwks())

    async def handler(_request: web.Request) -> web.Response:
        state.hits += 1
        if state.status != 200:
            return web.Response(status=state.status)
        return web.json_response(state.document)

    app = web.Application()
    app.router.add_get("/jwks.json", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    state.url = f"https://127.0.0.1:{port}/jwks.json"
    yield state
    await runner.cleanup()


async def test_url_key_set_caches_and_survives_idp_failures(
    idp: Idp, jwks_server: JwksServer
) -> None:
    """Keys are fetched once, kept through IdP errors, and refreshed when stale."""
    clock = ManualClock()
    issuer = UserTokenIssuer(
        issuer=ISSUER,
        audience=("credential-broker",),
        jwks_url=jwks_server.url,
        jwks_ca_file=jwks_server.ca,
        jwks_refresh_seconds=300,
    )
    check = UserTokenVerifier([issuer], clock)
    await check.start()
    try:
        assert (await check.verify(idp.token())).subject == "alice"
        assert (await check.verify(idp.token())).subject == "alice"
        assert jwks_server.hits == 1

        jwks_server.status = 500  # the IdP breaks; keys go stale
        clock.advance(301)
        assert (await check.verify(idp.token())).subject == "alice"  # last good keys kept
        assert jwks_server.hits == 2
        assert (await check.verify(idp.token())).subject == "alice"
        assert jwks_server.hits == 2  # failed fetches are retried at most every 30 s

        jwks_server.document = {"keys": []}  # an empty key set is not "good"
        jwks_server.status = 200
        clock.advance(31)
        assert (await check.verify(idp.token())).subject == "alice"
        assert jwks_server.hits == 3
    finally:
        await check.close()


async def test_unknown_kid_refetches_at_most_every_30_seconds(
    idp: Idp, jwks_server: JwksServer
) -> None:
    """An unknown kid triggers one refetch; a flood of them triggers no more within 30 s."""
    clock = ManualClock()
    key_set = UrlKeySet(jwks_server.url, clock, refresh_seconds=3600, ca_file=jwks_server.ca)
    issuer = UserTokenIssuer(
        issuer=ISSUER, audience=("credential-broker",), jwks_url=jwks_server.url
    )
    check = UserTokenVerifier([issuer], clock, key_sets={ISSUER: key_set})
    await check.start()
    try:
        assert jwks_server.hits == 1
        idp.keys.append(new_ed25519_key())  # the IdP rotates ...
        for _ in range(20):
            with pytest.raises(UserTokenRejected):
                await check.verify(idp.token(1))  # ... before publishing
        assert jwks_server.hits == 1  # within 30 s of the last fetch: none
        jwks_server.document = idp.jwks()
        clock.advance(30)
        assert (await check.verify(idp.token(1))).subject == "alice"
        assert jwks_server.hits == 2
    finally:
        await check.close()


async def test_no_keys_at_all_is_unavailable_not_forbidden(
    jwks_server: JwksServer, idp: Idp
) -> None:
    """If an issuer's keys were never fetched, the broker says 503, not 403."""
    jwks_server.status = 503
    issuer = UserTokenIssuer(
        issuer=ISSUER,
        audience=("credential-broker",),
        jwks_url=jwks_server.url,
        jwks_ca_file=jwks_server.ca,
    )
    check = UserTokenVerifier([issuer], ManualClock())
    await check.start()
    try:
        with pytest.raises(Unavailable, match="keys of user-token issuer"):
            await check.verify(idp.token())
    finally:
        await check.close()


async def test_a_verified_token_is_not_verified_again(idp: Idp) -> None:
    """The same token on every request of a session: one signature check, the same answer."""
    check = verifier(idp)
    token = idp.token(jti="t-1")
    first = await check.verify(token)
    assert [await check.verify(token) for _ in range(5)] == [first] * 5
    assert check.verifications == 1
    await check.verify(idp.token(jti="t-2"))  # another token is checked on its own
    assert check.verifications == 2


async def test_a_remembered_token_is_still_checked_for_time_and_actor(idp: Idp) -> None:
    """Expiry and `may_act` are judged on every request, remembered or not."""
    clock = ManualClock()
    check = verifier(idp, clock)
    token = idp.token(exp=int(clock.time()) + 60, may_act={"sub": "spiffe://td/agent/a"})
    assert (await check.verify(token, actor="spiffe://td/agent/a")).subject == "alice"
    with pytest.raises(UserTokenRejected) as refused:
        await check.verify(token, actor="spiffe://td/agent/b")
    assert refused.value.code == "actor_not_authorized"
    assert check.verifications == 1
    clock.advance(61 + UserTokenIssuer(issuer=ISSUER, audience=()).leeway_seconds)
    with pytest.raises(UserTokenRejected) as expired:
        await check.verify(token, actor="spiffe://td/agent/a")
    assert expired.value.code == "user_token_expired"


async def test_a_key_removed_from_the_issuers_set_is_not_trusted_from_memory(
    idp: Idp,
) -> None:
    """Once the JWKS drops the key that verified a token, that token is refused."""
    clock = ManualClock()
    check = verifier(idp, clock)
    token = idp.token()
    assert (await check.verify(token)).subject == "alice"
    idp.keys = [new_ed25519_key()]  # the IdP rotates its key and retires the old one
    idp.publish()
    clock.advance(2)  # the file is looked at again at most once a second
    with pytest.raises(UserTokenRejected, match="no key with kid"):
        await check.verify(token)
    assert check.verifications == 2


async def test_a_refused_token_is_checked_every_time(idp: Idp) -> None:
    """Failures are never remembered."""
    check = verifier(idp)
    stranger = Idp(idp.path.with_name("other.json"))
    stranger.keys[0] = idp.keys[0]  # same kid, but signed over different claims below
    token = idp.token()
    head, payload, _ = token.split(".")
    forged = f"{head}.{payload}.{stranger.token(sub='mallory').split('.')[2]}"
    for _ in range(3):
        with pytest.raises(UserTokenRejected):
            await check.verify(forged)
    assert check.verifications == 3
