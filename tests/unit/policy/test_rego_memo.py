"""The Rego decision memo: which input fields a policy reads, and results reused exactly."""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.dev.rego_policy import policy_data, policy_rego
from broker.domain import AuthMethod, Caller, RequestContext, UserContext
from broker.policy import rego_decisions
from broker.policy.config import PolicySettings
from broker.policy.rego import RegoPolicy
from broker.policy.rego_cpp import Bundle, Interpreter
from broker.policy.rego_decisions import RegoDecisions
from broker.policy.rego_program import RegoProgram, RegoSources, compile_rego
from broker.policy.rego_reads import input_fields
from tests.support.clock import ManualClock
from tests.unit.policy.rego_setup import ANALYTICS, CLAIMS, IDP, NOW, TD, TOOLS

DECISION = b"broker/decision"

# Reads the time: office hours need no approval, and a shadow rule objects to odd minutes.
HOURS_REGO = """\
package broker

import rego.v1

policy := {"id": "hours", "version": 1}

default office_hours := false

office_hours if {
	input.time.hour >= 9
	input.time.hour < 17
}

default approval := true

approval := false if office_hours

cap := 300 if input.user.tier == "gold" else := 60

would_deny := [d |
	input.time.minute % 2 == 1
	some t in input.tools
	d := {"rule": "even-minutes", "tool": t, "reason": "odd_minute", "message": "odd minute"}
]

decision := {
	"allow": true,
	"tools": {t: {"rule": "hours", "max_ttl": cap} | some t in input.tools},
	"require_approval": approval,
	"would_deny": would_deny,
} if {
	input.user != null
	not "blocked" in input.user.groups
} else := {"allow": false, "reasons": ["user_required"], "would_deny": would_deny}
"""

# Allowed only in even minutes.
EVEN_MINUTES_REGO = """\
package broker

import rego.v1

decision := {"allow": true, "tools": {t: {} | some t in input.tools}} if {
	input.time.minute % 2 == 0
} else := {"allow": false, "reasons": ["odd_minute"]}
"""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x := input.user.tier", {"user"}),
        ('x := input["time"].hour', {"time"}),
        ("x := input[`tools`]", {"tools"}),
        ("x := input.user\ny := input.tools[0]\nz := input.user.iss", {"user", "tools"}),
        ("# input.time, input\nx := 1", set()),
        ('x := "input.time"\ny := `input` # input["time"]', set()),
        ('x := "a \\" input.time"\ny := input.tools', {"tools"}),
        ("x := y.input.time\ny := data.input", set()),
        ("x := input.a with input.b as 1", {"a", "b"}),
        ("x := time.parse_rfc3339_ns(input.time.rfc3339)", {"time"}),
        ("x := input", None),
        ("x := count(input) > 0", None),
        ("x := input[k]", None),
        ("x := {k | some k, _ in input}", None),
        ("x := walk(input)", None),
        ("import input as i\nx := i.user", None),
        ("x := 1 with input as {}", None),
        ('x := input\n["user"]', None),
        ("x := input. user", None),
        ("x := time.now_ns()", None),
        ("x := time . now_ns()", None),
        ("x := rand.intn(input.user.sub, 10)", None),
        ('x := uuid.rfc4122("a")', None),
        ('x := http.send({"method": "get", "url": "https://x"})', None),
        ('x := net.lookup_ip_addr("x")', None),
        ("x := opa.runtime()", None),
        ('x := io.jwt.decode_verify(input.token, {"cert": "x"})', None),
        ('x := crypto.x509.parse_and_verify_certificates("x")', None),
        ('x := $"{input.user}"', None),
    ],
)
def test_the_fields_a_module_reads(source: str, expected: set[str] | None) -> None:
    """`input.NAME`/`input["NAME"]` name a field; other uses, or clock/network builtins: None."""
    found = input_fields({"m.rego": f"package t\nimport rego.v1\n{source}\n"})
    assert found == (None if expected is None else frozenset(expected))


def test_every_module_of_a_load_counts() -> None:
    """The fields are those of all modules; one module reading the whole input turns it off."""
    one, two = "package a\nx := input.user\n", "package b\ny := input.time\n"
    assert input_fields({"a.rego": one, "b.rego": two}) == {"user", "time"}
    assert input_fields({"a.rego": one, "b.rego": "package b\ny := input\n"}) is None


def test_the_dev_policy_reads_five_fields_and_not_the_time() -> None:
    """caller, user, actors, tools, ttl_requested: a request at another time reuses a result."""
    assert input_fields({"policy.rego": policy_rego()}) == {
        "caller",
        "user",
        "actors",
        "tools",
        "ttl_requested",
    }


@functools.cache
def program(name: str) -> RegoProgram:
    sources = {
        "dev": RegoSources(
            {"policy.rego": policy_rego()}, policy_data(TD), "data.broker.decision", "dev"
        ),
        "hours": RegoSources({"policy.rego": HOURS_REGO}, None, "data.broker.decision", "hours"),
    }
    return compile_rego(sources[name])


def context(
    agent: str = CLAIMS,
    tools: tuple[str, ...] = ("customer_data_api", "ticketing_api"),
    *,
    user: UserContext | None = None,
    ttl: int | None = None,
    now: datetime = NOW,
    svid_left: float = 3600,
    actors: tuple[str, ...] = (),
    scopes: tuple[str, ...] | None = None,
    not_after: float | None = None,
) -> RequestContext:
    caller = Caller(agent, TD, AuthMethod.X509_SVID, now + timedelta(seconds=svid_left))
    return RequestContext(
        caller, user, tools, ttl, now, "r", scopes=scopes, actors=actors, not_after=not_after
    )


def alice(tier: str = "standard", groups: tuple[str, ...] = ()) -> UserContext:
    return UserContext(IDP, "alice", NOW.timestamp() + 3600, tier=tier, groups=groups)


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every query of the decision entrypoint, counted at the C query's binding."""
    calls: list[bytes] = []
    query = Interpreter.query

    def counted(self: Interpreter, bundle: Bundle, entrypoint: bytes) -> object:
        if entrypoint == DECISION:
            calls.append(entrypoint)
        return query(self, bundle, entrypoint)

    monkeypatch.setattr(Interpreter, "query", counted)
    return calls


def fresh(name: str, ctx: RequestContext) -> object:
    """The decision of an engine that has never seen a request: always an evaluation."""
    return RegoDecisions(program(name), TOOLS).decide(ctx, "d")


def test_the_same_question_is_evaluated_once(evaluations: list[bytes]) -> None:
    """Ten identical requests to the dev policy: one evaluation, ten fresh-engine decisions."""
    engine = RegoDecisions(program("dev"), TOOLS)
    ctx = context(user=alice(), ttl=120)
    decisions = [engine.decide(ctx, "d") for _ in range(10)]
    assert len(evaluations) == 1
    assert decisions[0].allow
    assert all(d == fresh("dev", ctx) for d in decisions)


def test_fields_the_policy_does_not_read_reuse_the_result(evaluations: list[bytes]) -> None:
    """Another time, SVID expiry or scopes: no evaluation; TTL and scopes still this request's."""
    engine = RegoDecisions(program("dev"), TOOLS)
    engine.decide(context(user=alice()), "d")
    later = context(user=alice(), now=NOW + timedelta(minutes=7), svid_left=42)
    scoped = context(user=alice(), scopes=("elsewhere",))
    decisions = [engine.decide(later, "d"), engine.decide(scoped, "d")]
    assert len(evaluations) == 1
    assert decisions[0].ttl_granted == 42  # the SVID's remaining life, read per request
    assert decisions[1].reasons == ("scope_not_allowed",)
    assert decisions == [fresh("dev", later), fresh("dev", scoped)]


@pytest.mark.parametrize(
    "other",
    [
        context(user=alice(tier="gold")),
        context(user=alice(groups=("ops",))),
        context(user=None),
        context(tools=("customer_data_api",), user=alice()),
        context(user=alice(), ttl=301),
        context(user=alice(), actors=("a", "b", "c")),
        context(ANALYTICS, user=alice()),
    ],
    ids=["tier", "groups", "no-user", "tools", "ttl", "actors", "agent"],
)
def test_a_request_differing_in_a_read_field_is_evaluated_again(
    evaluations: list[bytes], other: RequestContext
) -> None:
    """User (tier, groups), tools, TTL, actors, caller: a new key, a new evaluation."""
    engine = RegoDecisions(program("dev"), TOOLS)
    engine.decide(context(user=alice()), "d")
    decision = engine.decide(other, "d")
    assert len(evaluations) == 1 + 1
    assert decision == fresh("dev", other)


def write_bundle(directory: Path, data: dict[str, object]) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "policy.rego").write_text(policy_rego())
    (directory / "data.json").write_text(json.dumps(data))


async def test_a_reload_forgets_every_result(tmp_path: Path, evaluations: list[bytes]) -> None:
    """A new version evaluates the same request again, under its own data."""
    bundle = tmp_path / "rego"
    data = policy_data(TD)
    write_bundle(bundle, data)
    policy = RegoPolicy(
        PolicySettings(file=None, engine="rego", bundle=bundle),
        tool_scopes=TOOLS,
        clock=ManualClock(NOW),
    )
    ctx = context(user=alice(), ttl=120)
    assert (await policy.decide(ctx, "d")).allow
    assert (await policy.decide(ctx, "d")).allow
    assert len(evaluations) == 1
    grants = data["grants"]
    assert isinstance(grants, dict)
    grants["claims-on-behalf-of-user"]["max_ttl"] = 60
    write_bundle(bundle, data)
    assert policy.reload()
    decision = await policy.decide(ctx, "d")
    assert len(evaluations) == 1 + 1
    assert decision.reasons == ("ttl_exceeds_max",)


async def test_a_policy_reading_the_time_answers_each_minute(tmp_path: Path) -> None:
    """`input.time.minute` is in the key: the same request a minute later is decided anew."""
    module = tmp_path / "even.rego"
    module.write_text(EVEN_MINUTES_REGO)
    clock = ManualClock(NOW)
    policy = RegoPolicy(
        PolicySettings(file=None, engine="rego", module=module),
        tool_scopes=TOOLS,
        clock=clock,
    )
    answers = []
    for _ in range(4):
        answers.append((await policy.decide(context(now=clock.now()), "d")).allow)
        clock.advance(60)
    assert answers == [True, False, True, False]


def module_only(source: str) -> RegoDecisions:
    sources = RegoSources({"p.rego": source}, None, "data.broker.decision", "p.rego")
    return RegoDecisions(compile_rego(sources), TOOLS)


@pytest.mark.parametrize("condition", ["count(input) > 0", "time.now_ns() > 0"])
def test_nothing_is_remembered_when_the_fields_cannot_be_told(
    evaluations: list[bytes], condition: str
) -> None:
    """A policy reading `input` whole, or the clock, is evaluated for every request."""
    header = "package broker\nimport rego.v1\n"
    engine = module_only(f'{header}decision := {{"allow": false}} if {condition}\n')
    assert engine.program.reads is None
    for _ in range(3):
        assert not engine.decide(context(), "d").allow
    assert len(evaluations) == 3


def test_an_evaluation_error_is_not_remembered(evaluations: list[bytes]) -> None:
    """A runtime error denies with policy_error every time, evaluated every time."""
    engine = module_only(
        'package broker\ndecision := object.get(data, ["broker", "decision"], input.user)\n'
    )
    assert engine.program.reads == {"user"}
    for _ in range(3):
        assert engine.decide(context(), "d").reasons == ("policy_error",)
    assert len(evaluations) == 3


def test_the_memo_is_bounded_and_forgets_the_oldest(
    monkeypatch: pytest.MonkeyPatch, evaluations: list[bytes]
) -> None:
    """At the bound, a new result pushes out the oldest one; the others stay."""
    monkeypatch.setattr(rego_decisions, "MEMO_ENTRIES", 2)
    engine = RegoDecisions(program("dev"), TOOLS)
    first, second, third = (context(user=alice(), ttl=t) for t in (10, 20, 30))
    for ctx in (first, second, third, second, third):
        engine.decide(ctx, "d")
    assert len(evaluations) == 3
    engine.decide(first, "d")
    assert len(evaluations) == 4


SPACE_FIELDS = {
    "agent": st.sampled_from([CLAIMS, ANALYTICS, f"spiffe://{TD}/agent/stranger"]),
    "tools": st.lists(st.sampled_from(sorted(TOOLS)), min_size=1, max_size=3, unique=True).map(
        tuple
    ),
    "user": st.one_of(
        st.none(),
        st.builds(
            UserContext,
            st.sampled_from([IDP, "https://evil.test"]),
            st.sampled_from(["alice", "bob"]),
            st.sampled_from([NOW.timestamp() + 3600, NOW.timestamp() + 90]),
            tier=st.sampled_from(["standard", "gold"]),
            groups=st.sampled_from([(), ("ops",), ("blocked",)]),
        ),
    ),
    "ttl": st.sampled_from([None, 30, 120, 300, 301]),
    "now": st.sampled_from([NOW + timedelta(seconds=s) for s in (0, 61, 7 * 3600, 9 * 3600)]),
    "svid_left": st.sampled_from([3600, 45]),
    "actors": st.sampled_from([(), ("a",), ("a", "b", "c")]),
    "scopes": st.sampled_from([None, ("customers:read",), ("other",)]),
    "not_after": st.sampled_from([None, NOW.timestamp() + 100]),
}
SPACE = st.fixed_dictionaries(SPACE_FIELDS)
MEMOISED = {name: RegoDecisions(program(name), TOOLS) for name in ("dev", "hours")}


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(sorted(MEMOISED)),
    first=SPACE,
    other=SPACE,
    changed=st.sets(st.sampled_from(sorted(SPACE_FIELDS)), max_size=2),
)
def test_the_memoised_engine_decides_as_a_fresh_evaluation(
    name: str, first: dict[str, object], other: dict[str, object], changed: set[str]
) -> None:
    """Allow, reasons, grants, TTL, rules, would_deny, require_approval: all as evaluated.

    The second request is the first with at most two fields drawn again, so it often
    has a remembered answer (the engine also keeps those of earlier examples).
    """
    second = {**first, **{k: other[k] for k in changed}}
    for request in (first, second):
        ctx = context(**request)  # type: ignore[arg-type]
        assert MEMOISED[name].decide(ctx, "d") == fresh(name, ctx)
