"""Properties (hypothesis): the granted TTL never exceeds a bound; unknown agents are denied."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain import AuthMethod, Caller, RequestContext, UserContext
from broker.policy.engine import PolicyEngine, grant_ttl
from broker.policy.loader import load_policy
from broker.policy.model import Policy

NOW = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)


@given(
    requested=st.one_of(st.none(), st.integers(min_value=1, max_value=10**9)),
    caps=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=4),
    svid_left=st.floats(min_value=-100, max_value=10**6, allow_nan=False),
    user_left=st.one_of(st.none(), st.floats(min_value=-100, max_value=10**6, allow_nan=False)),
)
def test_granted_ttl_never_exceeds_any_bound(
    requested: int | None, caps: list[int], svid_left: float, user_left: float | None
) -> None:
    """grant_ttl <= request, every cap, 300 s, the SVID's and the user token's remaining life."""
    now = NOW.timestamp()
    ttl = grant_ttl(
        requested=requested,
        caps=caps,
        now=now,
        svid_expires_at=now + svid_left,
        user_expires_at=None if user_left is None else now + user_left,
    )
    assert 0 <= ttl <= 300
    assert all(ttl <= cap for cap in caps)
    assert ttl <= max(svid_left, 0)
    if requested is not None:
        assert ttl <= requested
    if user_left is not None:
        assert ttl <= max(user_left, 0)


def _engine(rules: list[dict[str, object]]) -> PolicyEngine:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump({"id": "p", "version": 1, "rules": rules}))
        return PolicyEngine(load_policy(path))


ENGINE = _engine(
    [
        {
            "id": "claims",
            "agents": ["spiffe://example.org/agent/claims"],
            "tools": ["crm", "mail"],
            "max_ttl_seconds": 200,
        },
        {"id": "team", "agents": ["spiffe://example.org/team/*"], "tools": ["*"]},
        {"id": "partner", "agents": ["spiffe://partner.org/agent/bot"], "tools": ["crm"]},
    ]
)

segment = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12
).filter(lambda s: s not in {".", ".."})
domain = st.sampled_from(["example.org", "partner.org", "evil.org"])
tools = st.lists(
    st.sampled_from(["crm", "mail", "db", "files"]), min_size=1, max_size=4, unique=True
)


@settings(max_examples=300)
@given(
    domain=domain,
    path=st.lists(segment, min_size=1, max_size=5),
    tools=tools,
    ttl=st.one_of(st.none(), st.integers(min_value=1, max_value=100_000)),
)
def test_unknown_agents_are_always_denied(
    domain: str, path: list[str], tools: list[str], ttl: int | None
) -> None:
    """Any SPIFFE ID no rule names is denied, whatever it asks for."""
    spiffe_id = f"spiffe://{domain}/" + "/".join(path)
    known = spiffe_id in {
        "spiffe://example.org/agent/claims",
        "spiffe://partner.org/agent/bot",
    } or (spiffe_id.startswith("spiffe://example.org/team/"))
    caller = Caller(spiffe_id, domain, AuthMethod.X509_SVID, NOW + timedelta(hours=1))
    decision = ENGINE.decide(RequestContext(caller, None, tuple(tools), ttl, NOW, "r"), "d")
    if not known:
        assert not decision.allow
        assert decision.reasons == ("agent_unknown",)
        assert decision.ttl_granted == 0


@settings(max_examples=300)
@given(
    tools=tools,
    ttl=st.one_of(st.none(), st.integers(min_value=1, max_value=100_000)),
    svid_left=st.integers(min_value=0, max_value=7200),
    user_left=st.integers(min_value=-60, max_value=7200),
)
def test_decisions_never_grant_beyond_their_bounds(
    tools: list[str], ttl: int | None, svid_left: int, user_left: int
) -> None:
    """Whatever is asked, an allowed decision's TTL respects the rule cap, 300 s, SVID and user."""
    caller = Caller(
        "spiffe://example.org/agent/claims",
        "example.org",
        AuthMethod.X509_SVID,
        NOW + timedelta(seconds=svid_left),
    )
    user = UserContext("https://idp", "alice", NOW.timestamp() + user_left)
    decision = ENGINE.decide(RequestContext(caller, user, tuple(tools), ttl, NOW, "r"), "d")
    if decision.allow:
        assert set(tools) <= {"crm", "mail"}
        assert 1 <= decision.ttl_granted <= 200
        assert decision.ttl_granted <= svid_left
        assert decision.ttl_granted <= user_left
        if ttl is not None:
            assert decision.ttl_granted <= ttl
    else:
        assert decision.ttl_granted == 0


def _rich_policy() -> Policy:
    """Rules reading every part of a request: user, depth, TTL, scopes, shadow, time."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        agent = "spiffe://example.org/agent/"
        rules = [
            {
                "id": "no-db-bronze",
                "effect": "deny",
                "agents": [agent + "*"],
                "tools": ["db"],
                "user": {"tiers": ["bronze"]},
            },
            {
                "id": "gold-crm",
                "agents": [agent + "a"],
                "tools": ["crm"],
                "max_ttl_seconds": 120,
                "user": {"tiers": ["gold"], "groups_any": ["support"]},
                "scopes": ["crm:read"],
            },
            {
                "id": "any-crm",
                "agents": [agent + "a", agent + "b"],
                "tools": ["crm", "db"],
                "max_delegation_depth": 1,
            },
            {
                "id": "shadow-mail",
                "shadow": True,
                "agents": [agent + "*"],
                "tools": ["mail"],
                "user": {"issuers": ["https://idp"]},
            },
            {"id": "mail", "agents": [agent + "*"], "tools": ["mail"]},
            {"id": "d-db", "agents": [agent + "d"], "tools": ["db"], "max_ttl_seconds": 100},
            {
                "id": "office",
                "agents": [agent + "c"],
                "tools": ["crm", "mail"],
                "time_windows": [{"days": ["wed"], "start": "08:00", "end": "18:00"}],
            },
        ]
        path.write_text(yaml.safe_dump({"id": "p", "version": 1, "rules": rules}))
        return load_policy(path)


RICH = _rich_policy()
RICH_SCOPES = {"crm": ("crm:read", "crm:write"), "db": (), "mail": ()}
MEMOISED = PolicyEngine(RICH, RICH_SCOPES)


USERS = [None] + [
    UserContext(issuer, "alice", NOW.timestamp() + 3600, tier=tier, groups=groups)
    for issuer in ("https://idp", "https://other")
    for tier in (None, "gold", "bronze")
    for groups in ((), ("support",), ("support", "ops"))
]


@settings(max_examples=60)
@given(
    agent=st.sampled_from(["a", "b", "c", "d"]),
    tools=tools,
    ttl=st.one_of(st.none(), st.sampled_from([60, 120, 200, 400])),
    scopes=st.one_of(st.none(), st.sampled_from([("crm:read",), ("crm:write",)])),
    depth=st.integers(min_value=0, max_value=3),
    hour=st.sampled_from([7, 10, 19]),
)
def test_a_remembered_answer_is_the_answer_a_fresh_engine_gives(
    *,
    agent: str,
    tools: list[str],
    ttl: int | None,
    scopes: tuple[str, ...] | None,
    depth: int,
    hour: int,
) -> None:
    """One long-lived engine (memoising) decides exactly as a new engine for every request.

    Every user variant is asked in turn, so requests differing in one part the rules
    read meet in the memo.
    """
    now = NOW.replace(hour=hour)
    caller = Caller(
        f"spiffe://example.org/agent/{agent}",
        "example.org",
        AuthMethod.X509_SVID,
        now + timedelta(hours=1),
    )
    for user in USERS:
        ctx = RequestContext(
            caller,
            user,
            tuple(tools),
            ttl,
            now,
            "r",
            scopes=scopes,
            actors=tuple(f"spiffe://example.org/agent/up{i}" for i in range(depth)),
        )
        assert MEMOISED.decide(ctx, "d") == PolicyEngine(RICH, RICH_SCOPES).decide(ctx, "d")
