"""Deciding one request with one compiled Rego policy: input document in, `Decision` out.

Every request is decided on the same input document (`input_document`). Before the
policy runs, the agent registry (`agents` in the data document) is enforced as in the
rule engine: a tool the agent's entry does not declare is `tool_not_declared`, whatever
the policy says. Default deny: an undefined result, a result that is not an object, or a
runtime error denies (`policy_undefined`, `policy_error`). Caps are enforced here too:
whatever the policy returns, a TTL over 300 s or over a tool's cap is never granted.

Results are remembered per load under the input fields the policy reads (see
`RegoDecisions`): the same question asked again costs a key and a lookup, not rego-cpp.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from broker.constants import MAX_CREDENTIAL_TTL
from broker.domain import Decision, Limit, RequestContext, ShadowDenial, ToolGrant
from broker.policy.engine import (
    LIFETIME_EXHAUSTED,
    LIFETIME_EXHAUSTED_MESSAGE,
    PolicyEngine,
    request_ttl,
)
from broker.policy.rego_cpp import Interpreter, RegoCppError

if TYPE_CHECKING:
    from broker.policy.rego_program import RegoProgram

__all__ = ["MEMO_ENTRIES", "GrantSpec", "RegoDecisions", "grant_spec", "input_document"]

log = structlog.get_logger(__name__)

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PER = frozenset({"agent", "user", "tool"})
_MAX_TEXT = 512


def _caller(ctx: RequestContext) -> object:
    caller = ctx.caller
    return {
        "spiffe_id": caller.spiffe_id,
        "trust_domain": caller.trust_domain,
        "method": str(caller.method),
        "via_proxy": caller.via_proxy,
    }


def _user(ctx: RequestContext) -> object:
    user = ctx.user
    if user is None:
        return None
    return {
        "iss": user.issuer,
        "sub": user.subject,
        "tier": user.tier,
        "groups": list(user.groups),
        "exp": int(user.expires_at),
    }


def _time(ctx: RequestContext) -> object:
    now = ctx.now
    return {
        "unix": int(now.timestamp()),
        "rfc3339": (
            f"{now.year:04d}-{now.month:02d}-{now.day:02d}"
            f"T{now.hour:02d}:{now.minute:02d}:{now.second:02d}Z"
        ),
        "weekday": _WEEKDAYS[now.weekday()],
        "hour": now.hour,
        "minute": now.minute,
    }


# The input document, field by field: a memo key is built from the fields a policy reads.
_INPUT: dict[str, Callable[[RequestContext], object]] = {
    "caller": _caller,
    "user": _user,
    "actors": lambda ctx: list(ctx.actors),
    "delegation_chain": lambda ctx: list(ctx.delegation_chain),
    "tools": lambda ctx: list(ctx.tools),
    "ttl_requested": lambda ctx: ctx.ttl_requested,
    "scopes": lambda ctx: list(ctx.scopes) if ctx.scopes is not None else None,
    "time": _time,
}


def input_document(ctx: RequestContext) -> dict[str, object]:
    """The input every request is decided on (the same shape for every request)."""
    return {name: part(ctx) for name, part in _INPUT.items()}


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(dict.fromkeys(str(v)[:_MAX_TEXT] for v in value if isinstance(v, str)))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _limits(value: object) -> tuple[Limit, ...] | None:
    """The limits a grant declares; None when malformed (the request is then denied)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        return None
    out: list[Limit] = []
    for item in value:
        if not isinstance(item, dict):
            return None
        kind, per = item.get("kind"), _strings(item.get("per"))
        limit = _int(item.get("limit"))
        window = _int(item.get("window_seconds") or item.get("period_seconds"))
        if kind not in {"rate", "budget"} or not per or not set(per) <= _PER:
            return None
        if limit is None or limit < 1 or window is None or window < 1:
            return None
        out.append(Limit(str(kind), tuple(sorted(per)), limit, window))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class GrantSpec:
    """What a result grants one tool, as read from it (before the broker's own caps).

    Attributes:
        rule: The rule to credit (`rule`, or the grant's name), None when unnamed.
        max_ttl: The grant's TTL cap, None when it sets none.
        scopes: The scopes granted, None for the tool's own.
        limits: The rate limits and budgets; None when malformed (the request is denied).
    """

    rule: str | None
    max_ttl: int | None
    scopes: tuple[str, ...] | None
    limits: tuple[Limit, ...] | None


def grant_spec(grant: Mapping[str, object], name: str | None = None) -> GrantSpec:
    """Read one grant object (inline in a result, or named in the data's `grants`)."""
    rule = grant.get("rule", name)
    scopes = grant.get("scopes")
    return GrantSpec(
        rule=str(rule)[:_MAX_TEXT] if isinstance(rule, str) else None,
        max_ttl=_int(grant.get("max_ttl")),
        scopes=_strings(scopes) if isinstance(scopes, list) else None,
        limits=_limits(grant.get("limits")),
    )


def _would_deny(value: object) -> tuple[ShadowDenial, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        ShadowDenial(
            str(d.get("rule", "")),
            str(d.get("tool", "")),
            str(d.get("reason", "")),
            str(d.get("message", "")),
        )
        for d in value
        if isinstance(d, dict)
    )


MEMO_ENTRIES = 4096
_MISSING = object()
# The key is the JSON of the values read: as exact as the input rego-cpp is given (JSON
# tells `true` from `1` and `1` from `1.0`, which equal tuples would not), and cheaper.
_encode_key = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False).encode


class RegoDecisions:
    """Decides requests with one compiled policy (one thread at a time: its interpreter).

    The policy's results are remembered under the input fields it reads
    (`RegoProgram.reads`): a later request whose input agrees on them gets the result the
    evaluation gave, read again for this request (its tools, TTL, scopes, the expiries,
    its decision id). Nothing is remembered when the fields cannot be told, nor an
    evaluation that failed. At most `MEMO_ENTRIES` results, the oldest forgotten first;
    a reload is a new `RegoDecisions`, so a result never outlives its modules and data.
    """

    def __init__(self, program: RegoProgram, tool_scopes: Mapping[str, Sequence[str]]) -> None:
        """Args: the compiled policy; each tool's scopes from the catalogue."""
        self.program = program
        self.engine = PolicyEngine(program.policy)  # the registry, for the guard and directory
        self._scopes = {k: tuple(v) for k, v in tool_scopes.items()}
        self._interpreter = Interpreter()
        reads = program.reads
        # A field the input does not have is undefined for every request: not in the key.
        self._key_parts = (
            None if reads is None else tuple(_INPUT[name] for name in sorted(reads & _INPUT.keys()))
        )
        self._results: dict[str, object] = {}

    def decide(self, ctx: RequestContext, decision_id: str) -> Decision:
        """Decide on the input document (in memory: no I/O, never raises)."""
        agent = ctx.caller.spiffe_id
        undeclared = [t for t in ctx.tools if self.engine.registry.undeclared(agent, t)]
        if undeclared:
            messages = [f"agent {agent} does not declare tool {t}" for t in undeclared]
            return self.deny(decision_id, ("tool_not_declared",), messages)
        try:
            result = self._result(ctx)
        except RegoCppError as exc:
            log.error("rego evaluation failed", reason=str(exc)[:_MAX_TEXT])  # noqa: TRY400
            return self.deny(decision_id, ("policy_error",), ("the policy could not be evaluated",))
        return self._decision(ctx, decision_id, result)

    def _result(self, ctx: RequestContext) -> object:
        """The policy's result for this input: remembered, or evaluated (and remembered).

        Raises:
            RegoCppError: The evaluation failed (never remembered).
        """
        parts = self._key_parts
        if parts is None:
            return self._evaluate(ctx)
        key = _encode_key([part(ctx) for part in parts])
        results = self._results
        result = results.get(key, _MISSING)
        if result is _MISSING:
            result = self._evaluate(ctx)
            if len(results) >= MEMO_ENTRIES:
                del results[next(iter(results))]  # the oldest: dicts keep insertion order
            results[key] = result
        return result

    def _evaluate(self, ctx: RequestContext) -> object:
        """One evaluation: the whole input document, the entrypoint, the parsed result.

        The result (an undefined or malformed one too: it is what the policy says for
        this input) is shared by every request with the same key, so it is only read.
        """
        program = self.program
        self._interpreter.set_input(input_document(ctx))
        return self._interpreter.query(program.bundle, program.entrypoint)

    def _decision(self, ctx: RequestContext, decision_id: str, result: object) -> Decision:
        if result is None:
            return self.deny(decision_id, ("policy_undefined",), ("the policy gave no decision",))
        if not isinstance(result, dict) or not isinstance(result.get("allow"), bool):
            return self.deny(
                decision_id, ("policy_error",), ("the policy's decision is not an object",)
            )
        would_deny = _would_deny(result.get("would_deny"))
        if not result["allow"]:
            reasons = _strings(result.get("reasons")) or ("denied_by_policy",)
            messages = _strings(result.get("messages")) or tuple(
                f"denied by policy: {r}" for r in reasons
            )
            return self.deny(decision_id, reasons, messages, would_deny=would_deny)
        grants: list[ToolGrant] = []
        refusals: list[tuple[str, str]] = []
        tools = result.get("tools")
        overall = _int(result.get("max_ttl"))
        for tool in ctx.tools:
            grant = tools.get(tool) if isinstance(tools, dict) else None
            answer = self._grant(ctx, tool, grant, overall)
            if isinstance(answer, ToolGrant):
                grants.append(answer)
            else:
                refusals.append(answer)
        if refusals:
            return self.deny(
                decision_id,
                tuple(dict.fromkeys(code for code, _ in refusals)),
                tuple(message for _, message in refusals),
                would_deny=would_deny,
            )
        if result.get("require_approval") is True:
            grants = [dataclasses.replace(g, require_approval=True) for g in grants]
        ttl = request_ttl(ctx, [g.max_ttl for g in grants])
        if ttl < 1:
            return self.deny(
                decision_id, LIFETIME_EXHAUSTED, LIFETIME_EXHAUSTED_MESSAGE, would_deny=would_deny
            )
        return Decision(
            decision_id=decision_id,
            allow=True,
            policy_id=self.program.id,
            policy_version=self.program.version,
            ttl_granted=ttl,
            tools=tuple(grants),
            would_deny=would_deny,
        )

    def _grant(
        self, ctx: RequestContext, tool: str, grant: object, overall: int | None
    ) -> ToolGrant | tuple[str, str]:
        """One tool's grant (an object, or the name of one in `grants`), or its refusal."""
        spec = (
            self.program.grants.get(grant)
            if isinstance(grant, str)
            else grant_spec(grant)
            if isinstance(grant, dict)
            else None
        )
        if spec is None:
            return ("tool_not_allowed", f"the policy does not grant {tool}")
        caps = [MAX_CREDENTIAL_TTL, *(c for c in (spec.max_ttl, overall) if c is not None)]
        cap = max(0, min(caps))
        if ctx.ttl_requested is not None and ctx.ttl_requested > cap:
            message = f"requested TTL {ctx.ttl_requested} s exceeds the maximum {cap} s for {tool}"
            return ("ttl_exceeds_max", message)
        allowed = spec.scopes if spec.scopes is not None else self._scopes.get(tool, ())
        if ctx.scopes is not None and not set(ctx.scopes) <= set(allowed):
            return ("scope_not_allowed", f"requested scope is wider than granted for {tool}")
        if spec.limits is None:
            return ("policy_error", f"the policy's limits for {tool} are invalid")
        return ToolGrant(
            tool=tool,
            allowed=True,
            rule_id=spec.rule or "rego",
            max_ttl=cap,
            scopes=tuple(ctx.scopes) if ctx.scopes is not None else allowed,
            limits=spec.limits,
        )

    def deny(
        self,
        decision_id: str,
        reasons: Sequence[str],
        messages: Sequence[str],
        *,
        would_deny: tuple[ShadowDenial, ...] = (),
    ) -> Decision:
        """A denial under this policy."""
        return Decision.denial(
            decision_id,
            policy_id=self.program.id,
            policy_version=self.program.version,
            reasons=reasons,
            messages=messages,
            would_deny=would_deny,
        )
