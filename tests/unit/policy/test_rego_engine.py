"""The Rego engine: the dev policy decides like the rule engine; default deny; no abort."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from broker.dev.rego_policy import policy_data_json, policy_rego
from broker.dev.templates import policy_yaml
from broker.domain import AuthMethod, Caller, Decision, Limit, RequestContext, UserContext
from broker.errors import ConfigError
from broker.policy.config import PolicySettings
from broker.policy.engine import PolicyEngine
from broker.policy.loader import load_policy
from broker.policy.rego import RegoPolicy, input_document
from tests.support.clock import ManualClock
from tests.unit.policy.rego_setup import ANALYTICS, CLAIMS, IDP, NOW, TD, TOOLS


def rego(tmp_path: Path, source: str) -> RegoPolicy:
    module = tmp_path / "policy.rego"
    module.write_text(source)
    return RegoPolicy(
        PolicySettings(file=None, engine="rego", module=module),
        tool_scopes=TOOLS,
        clock=ManualClock(),
    )


def dev_rego(tmp_path: Path) -> RegoPolicy:
    bundle = tmp_path / "rego"
    bundle.mkdir()
    (bundle / "policy.rego").write_text(policy_rego())
    (bundle / "data.json").write_text(policy_data_json(TD))
    return RegoPolicy(
        PolicySettings(file=None, engine="rego", bundle=bundle),
        tool_scopes=TOOLS,
        clock=ManualClock(),
    )


def user(issuer: str = IDP, **extra: object) -> UserContext:
    return UserContext(issuer, "alice", NOW.timestamp() + 3600, tier="standard", **extra)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    name: str
    agent: str
    tools: tuple[str, ...]
    user: UserContext | None = None
    ttl: int | None = None
    actors: tuple[str, ...] = ()


TABLE = [
    Case("claims-with-user", CLAIMS, ("customer_data_api", "ticketing_api"), user()),
    Case("claims-short-ttl", CLAIMS, ("customer_data_api",), user(), ttl=60),
    Case("claims-ttl-over-cap", CLAIMS, ("ticketing_api",), user(), ttl=301),
    Case("claims-without-user", CLAIMS, ("customer_data_api",)),
    Case("claims-without-user-ttl", CLAIMS, ("customer_data_api",), ttl=900),
    Case("claims-foreign-idp", CLAIMS, ("customer_data_api",), user("https://evil.test")),
    Case("claims-deep-chain", CLAIMS, ("ticketing_api",), user(), actors=("a", "b", "c")),
    Case("claims-chain-ok", CLAIMS, ("ticketing_api",), user(), actors=("a", "b")),
    Case("claims-wrong-tool", CLAIMS, ("analytics_api",), user()),
    Case("claims-mixed", CLAIMS, ("customer_data_api", "analytics_api"), user()),
    Case("analytics-batch", ANALYTICS, ("analytics_api",)),
    Case("analytics-with-user", ANALYTICS, ("analytics_api",), user()),
    Case("analytics-customer-data", ANALYTICS, ("customer_data_api",)),
    Case("stranger", f"spiffe://{TD}/agent/stranger", ("analytics_api",)),
    Case("other-domain", "spiffe://other.test/agent/claims", ("customer_data_api",), user()),
]


def context(case: Case) -> RequestContext:
    caller = Caller(case.agent, TD, AuthMethod.X509_SVID, NOW + timedelta(hours=1))
    return RequestContext(caller, case.user, case.tools, case.ttl, NOW, "r", actors=case.actors)


def summary(decision: Decision) -> tuple[object, ...]:
    if not decision.allow:  # a denial's per-tool grants are not used by the broker
        return (False, decision.reasons, decision.ttl_granted)
    return (
        decision.allow,
        decision.reasons,
        decision.ttl_granted,
        decision.rule_ids,
        tuple((g.tool, g.max_ttl, g.scopes, g.limits) for g in decision.tools if g.allowed),
    )


@pytest.mark.parametrize("case", TABLE, ids=[c.name for c in TABLE])
async def test_both_engines_decide_the_dev_policy_identically(tmp_path: Path, case: Case) -> None:
    """policy.yaml and policy.rego give the same allow, reasons, TTL, rules and limits."""
    yaml_path = tmp_path / "policy.yaml"
    yaml_path.write_text(policy_yaml(TD))
    rules = PolicyEngine(load_policy(yaml_path), TOOLS)
    engine = dev_rego(tmp_path)
    expected = rules.decide(context(case), "d")
    got = await engine.decide(context(case), "d")
    assert summary(got) == summary(expected)
    assert engine.version[0] == rules.policy.id == "dev"


async def test_an_undefined_decision_denies(tmp_path: Path) -> None:
    """A query with no value for this input denies (policy_undefined) instead of aborting."""
    source = 'package broker\nimport rego.v1\ndecision := {"allow": true} if { input.x == 1 }\n'
    engine = rego(tmp_path, source)
    decision = await engine.decide(context(TABLE[0]), "d")
    assert not decision.allow
    assert decision.reasons == ("policy_undefined",)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('decision := "yes"', "policy_error"),
        ('decision := {"allow": true, "tools": {}}', "tool_not_allowed"),
        (
            'decision := {"allow": true, "tools": {"analytics_api": {"limits": [{"kind": "x"}]}}}',
            "policy_error",
        ),
        ('decision := {"allow": false}', "denied_by_policy"),
        ('decision := object.get(data, ["broker", "decision"], 0)', "policy_error"),
    ],
)
async def test_malformed_or_unservable_results_deny(tmp_path: Path, body: str, reason: str) -> None:
    """Results that are not objects, miss a tool, carry bad limits, or fail at run time deny."""
    engine = rego(tmp_path, f"package broker\n{body}\n")
    case = Case("x", ANALYTICS, ("analytics_api",))
    decision = await engine.decide(context(case), "d")
    assert not decision.allow
    assert decision.reasons == (reason,)


async def test_caps_hold_whatever_the_policy_returns(tmp_path: Path) -> None:
    """A policy granting max_ttl 3600 still yields at most 300 s; limits and rule are read."""
    engine = rego(
        tmp_path,
        'package broker\ndecision := {"allow": true, "tools": {"analytics_api": {"rule": "r", '
        '"max_ttl": 3600, "limits": [{"kind": "budget", "per": ["agent"], "limit": 5, '
        '"period_seconds": 60}]}}}\n',
    )
    decision = await engine.decide(context(Case("x", ANALYTICS, ("analytics_api",))), "d")
    assert decision.allow
    assert decision.ttl_granted == 300
    assert decision.rule_ids == ("r",)
    assert decision.tools[0].limits[0].kind == "budget"


def test_a_module_that_does_not_compile_is_a_config_error(tmp_path: Path) -> None:
    """Compile errors name the file and rego-cpp's message, in one line."""
    with pytest.raises(ConfigError, match=r"policy\.rego: ") as caught:
        rego(tmp_path, "package broker\ndecision := \n")
    assert "\n" not in str(caught.value)


def test_the_input_document_has_every_field(tmp_path: Path) -> None:
    """caller, user, actors, delegation chain, tools, TTL, scopes and time (UTC parts)."""
    doc = input_document(context(Case("x", CLAIMS, ("ticketing_api",), user(), 60, ("a",))))
    assert doc["caller"] == {
        "spiffe_id": CLAIMS,
        "trust_domain": TD,
        "method": "x509_svid",
        "via_proxy": None,
    }
    assert doc["delegation_chain"] == ["alice", "a", CLAIMS]
    assert doc["time"] == {
        "unix": int(NOW.timestamp()),
        "rfc3339": "2026-11-18T10:00:00Z",
        "weekday": "wed",
        "hour": 10,
        "minute": 0,
    }
    assert doc["ttl_requested"] == 60
    assert doc["user"]["iss"] == IDP  # type: ignore[index]


async def test_require_approval_is_read_from_the_result(tmp_path: Path) -> None:
    """`require_approval: true` in the result makes an allowed decision wait for approval."""
    engine = rego(
        tmp_path,
        'package broker\ndecision := {"allow": true, "require_approval": true, '
        '"tools": {"analytics_api": {}}}\n',
    )
    decision = await engine.decide(context(Case("x", ANALYTICS, ("analytics_api",))), "d")
    assert decision.allow
    assert decision.require_approval


def bundle(tmp_path: Path, module: str, data: dict[str, object]) -> RegoPolicy:
    directory = tmp_path / "bundle"
    directory.mkdir(exist_ok=True)
    (directory / "policy.rego").write_text(module)
    (directory / "data.json").write_text(json.dumps(data))
    return RegoPolicy(
        PolicySettings(file=None, engine="rego", bundle=directory),
        tool_scopes=TOOLS,
        clock=ManualClock(),
    )


GRANT_BY_NAME = (
    "package broker\nimport rego.v1\n"
    'decision := {"allow": true, "tools": {t: data.pick[t] | some t in input.tools}}\n'
)


async def test_a_tool_granted_by_name_takes_the_named_grant_from_the_data(tmp_path: Path) -> None:
    """`tools: {t: "name"}` reads max_ttl and limits of `grants.name`; an unknown name denies."""
    limits = [{"kind": "rate", "per": ["agent"], "limit": 5, "window_seconds": 60}]
    data = {
        "grants": {"batch": {"max_ttl": 90, "limits": limits}},
        "pick": {"analytics_api": "batch", "ticketing_api": "nowhere"},
    }
    engine = bundle(tmp_path, GRANT_BY_NAME, data)
    granted = await engine.decide(context(Case("x", ANALYTICS, ("analytics_api",))), "d")
    assert granted.allow
    assert granted.rule_ids == ("batch",)
    assert granted.ttl_granted == 90
    assert granted.tools[0].limits == (Limit("rate", ("agent",), 5, 60),)
    unknown = await engine.decide(context(Case("x", ANALYTICS, ("ticketing_api",))), "d")
    assert unknown.reasons == ("tool_not_allowed",)


async def test_the_registry_in_the_data_refuses_undeclared_tools(tmp_path: Path) -> None:
    """`agents` in data.json is the registry: an undeclared tool is refused before the policy."""
    registry = [
        {"spiffe_id": ANALYTICS, "owner": {"team": "data"}, "declared_tools": ["analytics_api"]}
    ]
    data = {"agents": registry, "pick": {t: {"rule": "any"} for t in TOOLS}}
    engine = bundle(tmp_path, GRANT_BY_NAME, data)
    refused = await engine.decide(context(Case("x", ANALYTICS, ("ticketing_api",))), "d")
    assert refused.reasons == ("tool_not_declared",)
    assert (await engine.decide(context(Case("x", ANALYTICS, ("analytics_api",))), "d")).allow
    entry = engine.engine.registry.entry_for(ANALYTICS)
    assert entry is not None
    assert entry.owner_team == "data"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"agents": [{"spiffe_id": "not-an-id"}]}, r"agents\[0\]\.spiffe_id"),
        ({"agents": [{"spiffe_id": ANALYTICS, "declared_tools": ["nope"]}]}, "nope"),
        ({"grants": {"g": {"limits": [{"kind": "x"}]}}}, "grants.g"),
    ],
)
def test_a_malformed_registry_or_grant_is_a_config_error(
    tmp_path: Path, data: dict[str, object], message: str
) -> None:
    """The data document's registry and grants are validated at load, naming the key."""
    with pytest.raises(ConfigError, match=message):
        bundle(tmp_path, GRANT_BY_NAME, data)
