"""The issuer contract, run against every implementation: the JWT issuer and the Vault issuer.

Each is opened through its registered factory. The Vault issuer runs against a real
OpenBao (tests/support/openbao.py), logged in with a static token, in each of its kinds:
a child token, a response-wrapped KV secret, and a dynamic secret (a leased PKI
certificate: the same code path as database credentials, without PostgreSQL).

Promises: `issue()` returns a credential for the tool, of the issuer's `kind`, expiring
no later than now + ttl, carrying a secret or data; the credential's `audit_id` is
`audit_id(credential_id)`, an HMAC for Vault (lease ids and accessors are secrets) and
the `jti` for JWT; `revoke()` makes the credential unusable at its source (Vault: the
token accessor or the lease is gone) and may be repeated.

Failure: OpenBao frozen with SIGSTOP: `issue()` and `revoke()` raise `Unavailable`
within the configured timeout, and nothing is left behind: what OpenBao carries out
after the deadline (a credential the issuer never saw) is revoked by the issuer's lease
reconciler once older than its grace period.
The JWT issuer does no I/O, so "its backend fails" has no meaning, and `revoke()` has
nothing to undo at a source (revocation lives in the state store). Its failure case is
instead: a token it minted stops verifying, through its `TokenVerifier` side, once its
signing key is no longer known (removed from the key file).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import hvac
import jwt
import pytest

from broker.config.settings import Settings
from broker.domain import Credential
from broker.errors import Unavailable
from broker.issuers.base import IssueRequest
from broker.issuers.jwt.keys import add_key
from broker.typing import Issuer, StateStore
from tests.support.broker import Identity, eventually
from tests.support.clock import ManualClock
from tests.support.issuers import issue_request, open_issuer
from tests.support.openbao import KV_PATH, PKI_ROLE_PATH, IssuerVault, issuer_vault
from tests.support.proxy import stubborn_proxy

TTL = 120
# Short, so frozen-Vault cases stay quick; long enough for a PKI issue on a loaded machine.
VAULT_TIMEOUT = 1.5

JWT_TOOL = {"type": "jwt", "audience": "https://docs.example.org", "scope": "docs:read"}
VAULT_TOOLS: dict[str, Any] = {
    "ops_token": {"type": "vault", "vault": {"kind": "token", "policies": ["default"]}},
    "api_key": {"type": "vault", "vault": {"kind": "kv", "path": KV_PATH}},
    "agent_cert": {
        "type": "vault",
        "vault": {
            "kind": "dynamic",
            "method": "write",
            "path": PKI_ROLE_PATH,
            "params": {"common_name": "agent.example.org"},
        },
    },
}
VAULT_CASES = {"vault-token": "ops_token", "vault-kv": "api_key", "vault-dynamic": "agent_cert"}


@dataclass
class Case:
    issuer: Issuer
    state: StateStore
    tool: str
    request: Callable[[], IssueRequest]  # a fresh request for the tool
    exists_at_source: Callable[[str], bool] | None  # None: nothing at a source (JWT)
    vault: IssuerVault | None = None


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerVault]:
    """One OpenBao for the module (each test logs in afresh)."""
    with issuer_vault(tmp_path_factory.mktemp("bao")) as vault:
        yield vault


def vault_exists(vault: IssuerVault) -> Callable[[str], bool]:
    """Whether a Vault credential (a token by accessor, or a lease) still exists."""

    def exists(credential_id: str) -> bool:
        try:
            if "/" in credential_id:
                vault.root.sys.read_lease(credential_id)
            else:
                vault.root.auth.token.lookup_accessor(credential_id)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
            return False
        return True

    return exists


def vault_settings(
    identity: Identity, vault: IssuerVault, address: str | None = None, **options: Any
) -> Settings:
    """The vault tools on `vault` (or on `address`, a relay in front of it)."""
    server = vault.server
    return identity.settings(
        vault={
            "address": address or server.address,
            **({"ca_file": str(server.ca_file)} if server.ca_file else {}),
            "auth": {"method": "token", "token_file": str(vault.token_file)},
            "timeout_seconds": VAULT_TIMEOUT,
            "breaker_failures": 100,  # the deadline is under test here, not the breaker
            **options,
        },
        tools=VAULT_TOOLS,
    )


@pytest.fixture
async def case(
    request: pytest.FixtureRequest, identity: Identity, clock: ManualClock
) -> AsyncIterator[Case]:
    """The implementation named by the test's parameter, opened by its factory."""
    name = request.param
    if name == "jwt":
        settings = identity.settings(
            jwt_issuer={"keys_file": str(identity.directory / "issuer-keys.json")},
            tools={"docs": JWT_TOOL},
        )
        async with open_issuer("jwt", settings, clock, identity.directory) as opened:
            yield Case(
                opened.parts.issuer,
                opened.state,
                "docs",
                lambda: issue_request(settings, clock, "docs", TTL),
                None,
            )
        return
    vault: IssuerVault = request.getfixturevalue("bao")
    tool = VAULT_CASES[name]
    settings = vault_settings(identity, vault)
    async with open_issuer("vault", settings, clock, identity.directory) as opened:
        yield Case(
            opened.parts.issuer,
            opened.state,
            tool,
            lambda: issue_request(settings, clock, tool, TTL),
            vault_exists(vault),
            vault,
        )


ALL_CASES = ["jwt", *VAULT_CASES]


@pytest.mark.parametrize("case", ALL_CASES, indirect=True)
async def test_issue_returns_a_credential_for_the_tool(case: Case, clock: ManualClock) -> None:
    """A credential of the issuer's kind, for the tool, expiring by now + ttl, with a secret."""
    credential = await case.issuer.issue(case.request())
    assert credential.tool == case.tool
    assert credential.type == case.issuer.kind
    assert credential.expires_at.timestamp() <= clock.time() + TTL
    assert credential.expires_at.timestamp() > clock.time()
    assert credential.secret is not None or credential.data
    await case.issuer.revoke(credential.credential_id)


@pytest.mark.parametrize("case", ALL_CASES, indirect=True)
async def test_audit_id_never_shows_a_secret_id(case: Case) -> None:
    """audit_id is what the credential carries: an HMAC for Vault ids, the jti for JWTs."""
    credential = await case.issuer.issue(case.request())
    audit_id = case.issuer.audit_id(credential.credential_id)
    assert credential.audit_id == audit_id
    if case.issuer.kind == "vault":
        assert audit_id.startswith("hmac-sha256:")
        assert credential.credential_id not in audit_id
    else:
        assert credential.secret is not None
        claims = jwt.decode(credential.secret.reveal(), options={"verify_signature": False})
        assert audit_id == credential.credential_id == claims["jti"]
    await case.issuer.revoke(credential.credential_id)


@pytest.mark.parametrize("case", ALL_CASES, indirect=True)
async def test_revoke_undoes_at_the_source_and_repeats(case: Case) -> None:
    """After revoke() the credential is gone at its source; a second revoke() is harmless."""
    credential = await case.issuer.issue(case.request())
    exists = case.exists_at_source
    if exists is not None:
        assert await asyncio.to_thread(exists, credential.credential_id)
    await case.issuer.revoke(credential.credential_id)
    if exists is not None:
        assert not await asyncio.to_thread(exists, credential.credential_id)
    await case.issuer.revoke(credential.credential_id)


@pytest.mark.parametrize("case", list(VAULT_CASES), indirect=True)
async def test_frozen_vault_is_unavailable_in_time(case: Case) -> None:
    """OpenBao frozen (SIGSTOP): issue() and revoke() raise Unavailable within the deadline."""
    assert case.vault is not None
    if case.vault.server.pid is None:
        pytest.skip("an external Vault (VAULT_ADDR) cannot be frozen from here")
    issued = await case.issuer.issue(case.request())  # a warm connection
    case.vault.server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await case.issuer.issue(case.request())
        assert time.monotonic() - started < VAULT_TIMEOUT + 1
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await case.issuer.revoke(issued.credential_id)
        assert time.monotonic() - started < VAULT_TIMEOUT + 1
        # Nothing the failed issue() could have taken was recorded as issued.
        recorded = await case.state.agent_credentials(case.request().ctx.caller.spiffe_id)
        assert [r.credential_id for r in recorded] == [issued.credential_id]
    finally:
        case.vault.server.resume()
    await case.issuer.revoke(issued.credential_id)


ORPHAN_GRACE = 1.0
RECONCILE_SECONDS = 1.0


@pytest.mark.parametrize("tool", list(VAULT_CASES.values()))
async def test_frozen_vault_leaves_nothing_behind(
    tool: str, bao: IssuerVault, identity: Identity, clock: ManualClock
) -> None:
    """A request frozen OpenBao carries out after the deadline: the reconciler revokes it."""
    if bao.server.pid is None:
        pytest.skip("an external Vault (VAULT_ADDR) cannot be frozen from here")
    # Through a relay that does not tell OpenBao the broker gave up, the frozen request is
    # always carried out once OpenBao resumes (directly, OpenBao may notice and drop it:
    # a race on its side), for every kind of Vault credential.
    with stubborn_proxy(bao.server.address) as proxy:
        settings = vault_settings(
            identity,
            bao,
            address=proxy.address,
            orphan_grace_seconds=ORPHAN_GRACE,
            reconcile_seconds=RECONCILE_SECONDS,
        )
        async with open_issuer("vault", settings, clock, identity.directory) as opened:
            swept = 0
            for _ in range(5):  # until two orphans were made and swept
                if await _frozen_request_is_swept(opened.parts.issuer, bao, settings, clock, tool):
                    swept += 1
                if swept == 2:
                    break
            assert swept >= 1, "no frozen request was ever carried out: nothing was tested"


async def _frozen_request_is_swept(
    issuer: Issuer, bao: IssuerVault, settings: Settings, clock: ManualClock, tool: str
) -> bool:
    """Freeze OpenBao during an issue; the credential it makes later is swept.

    Returns False when OpenBao never carried the frozen request out (on a loaded machine
    the request may not have reached it before the freeze): then nothing was left behind.
    """
    warm = await _warm_issue(issuer, settings, clock, tool)
    known = await asyncio.to_thread(bao.inventory) | {_ref(warm.credential_id)}
    bao.server.pause()
    try:
        with pytest.raises(Unavailable):
            await issuer.issue(issue_request(settings, clock, tool, TTL))
        await asyncio.sleep(0.3)
    finally:
        bao.server.resume()

    async def leftovers() -> set[str]:
        return await asyncio.to_thread(bao.inventory) - known

    # Vault carries the request out now: a credential the issuer never saw.
    try:
        orphaned = await eventually(leftovers, within=5, interval=0.1)
    except AssertionError:
        await issuer.revoke(warm.credential_id)
        return False
    assert len(orphaned) == 1

    async def swept() -> bool:
        clock.advance(RECONCILE_SECONDS)  # the reconciler runs on this clock
        return not await leftovers()

    await eventually(swept, within=30, interval=0.2)
    # The recorded, live credential was never touched.
    assert await asyncio.to_thread(vault_exists(bao), warm.credential_id)
    await issuer.revoke(warm.credential_id)
    return True


async def _warm_issue(
    issuer: Issuer, settings: Settings, clock: ManualClock, tool: str
) -> Credential:
    """An ordinary issue before the freeze; on a loaded machine OpenBao may be slow to answer.

    A timed-out attempt may still be carried out by OpenBao: waiting before the next one
    lets it land in the inventory the caller then takes as known.
    """
    for _ in range(3):
        try:
            return await issuer.issue(issue_request(settings, clock, tool, TTL))
        except Unavailable:
            await asyncio.sleep(2)
    pytest.fail("OpenBao did not answer an ordinary issue three times")


def _ref(credential_id: str) -> str:
    """A credential id as `IssuerVault.inventory` names it."""
    if "/" in credential_id:
        return f"lease:{credential_id.rsplit('/', 1)[-1]}"
    return f"accessor:{credential_id}"


async def test_jwt_token_stops_verifying_once_its_key_is_unknown(
    identity: Identity, clock: ManualClock
) -> None:
    """JWT (no backend): a minted token stops verifying once its key leaves the key file."""
    keys_file = identity.directory / "issuer-keys.json"
    settings = identity.settings(jwt_issuer={"keys_file": str(keys_file)}, tools={"docs": JWT_TOOL})
    async with open_issuer("jwt", settings, clock, identity.directory) as opened:
        verifier = opened.parts.token_verifier
        assert verifier is not None
        credential = await opened.parts.issuer.issue(issue_request(settings, clock, "docs", TTL))
        assert credential.secret is not None
        token = credential.secret.reveal()
        assert verifier.verify(token) is not None
        replacement = identity.directory / "replacement-keys.json"
        add_key(replacement, "EdDSA", now=clock.time(), publish_ahead=0, leeway=60)
        replacement.replace(keys_file)  # the old key is gone (say, it leaked)

        def forgotten() -> bool:
            clock.advance(6)  # the key ring re-reads its file every 5 s of its clock
            return verifier.verify(token) is None

        await eventually(forgotten, within=10, interval=0.2)
        assert clock.time() < credential.expires_at.timestamp()  # not merely expired
