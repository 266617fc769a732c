"""RFC 8693 `may_act`: a user token that names its authorized actor admits no other agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.context.user_token import UserTokenRejected, check_may_act
from tests.unit.context.test_user_token import Idp, verifier

CLAIMS = "spiffe://example.org/agent/claims"
ANALYTICS = "spiffe://example.org/agent/analytics"


@pytest.fixture
def idp(tmp_path: Path) -> Idp:
    provider = Idp(tmp_path / "jwks.json")
    provider.publish()
    return provider


async def test_may_act_naming_the_actor_is_accepted(idp: Idp) -> None:
    """may_act.sub equal to the acting agent's SPIFFE ID: the token is accepted."""
    user = await verifier(idp).verify(idp.token(may_act={"sub": CLAIMS}), actor=CLAIMS)
    assert user.subject == "alice"


async def test_may_act_naming_another_agent_is_refused(idp: Idp) -> None:
    """may_act.sub naming another agent: actor_not_authorized, the actor named in the message."""
    with pytest.raises(UserTokenRejected) as excinfo:
        await verifier(idp).verify(idp.token(may_act={"sub": ANALYTICS}), actor=CLAIMS)
    assert excinfo.value.code == "actor_not_authorized"
    assert CLAIMS in excinfo.value.message


async def test_without_an_actor_may_act_is_not_evaluated(idp: Idp) -> None:
    """verify() without `actor` (no one acts yet) does not judge may_act."""
    assert (await verifier(idp).verify(idp.token(may_act={"sub": ANALYTICS}))).subject == "alice"


@pytest.mark.parametrize("may_act", [CLAIMS, {"iss": "x"}, {"sub": 7}, []])
def test_malformed_may_act_is_an_invalid_token(may_act: Any) -> None:
    """A may_act that is not an object with a string sub is an invalid token, never a pass."""
    with pytest.raises(UserTokenRejected) as excinfo:
        check_may_act(may_act, CLAIMS, what="user token")
    assert excinfo.value.code == "user_token_invalid"
    with pytest.raises(UserTokenRejected) as excinfo:
        check_may_act(may_act, CLAIMS, what="subject_token", invalid="subject_token_invalid")
    assert excinfo.value.code == "subject_token_invalid"


def test_absent_may_act_allows_anyone_the_policy_allows() -> None:
    """No may_act claim: no restriction from the token itself."""
    check_may_act(None, CLAIMS, what="user token")
