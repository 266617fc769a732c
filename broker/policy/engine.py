"""Policy decisions: default deny, deny rules override allow rules, indexed by SPIFFE ID.

For each requested tool the candidate rules are those whose agent patterns match the
caller and that name the tool. A matching deny rule (its conditions all true) denies; an
allow rule whose conditions all hold allows (the first in file order wins, and brings its
TTL cap, scopes and limits). A shadow rule (`shadow: true`, formerly `mode: dry_run`)
never blocks: what it would have denied is recorded in the decision as `would_deny` (and
in the audit trail as `would_deny` and `shadow`).

Candidate rules come from an index (exact IDs in a dict; `/*` prefixes looked up once per
path segment of the caller's ID), so a decision costs the same with 10 or 10,000 agents.
Agents keep asking the same thing: the grants are remembered under exactly the parts of
the request the rules read (see `PolicyEngine._grants`), never across a policy change.

Before the rules, the agent registry: an agent whose entry declares its tools is denied
any other tool (`tool_not_declared`); an agent without an entry, or whose entry declares
no tools, is not restricted by the registry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from broker.constants import MAX_CREDENTIAL_TTL
from broker.domain import Decision, RequestContext, ShadowDenial, ToolGrant
from broker.policy.model import Effect, Mode, Policy, Rule
from broker.policy.registry import AgentRegistry

__all__ = ["PolicyEngine", "grant_ttl"]

_SCHEME = "spiffe://"


def grant_ttl(
    *,
    requested: int | None,
    caps: Sequence[int],
    now: float,
    svid_expires_at: float,
    user_expires_at: float | None,
) -> int:
    """The TTL to grant, in whole seconds (never negative).

    The least of the request, every cap, 300 s and the remaining lives of the agent's
    SVID and of the user's token. An omitted request means "as long as allowed".
    """
    bound = min([MAX_CREDENTIAL_TTL, *caps])
    limits = [float(bound), svid_expires_at - now]
    if requested is not None:
        limits.append(float(requested))
    if user_expires_at is not None:
        limits.append(user_expires_at - now)
    return max(0, math.floor(min(limits)))


LIFETIME_EXHAUSTED = ("credential_lifetime_exhausted",)
LIFETIME_EXHAUSTED_MESSAGE = ("the agent's SVID or the user's token expires too soon to issue",)


def request_ttl(ctx: RequestContext, caps: Sequence[int]) -> int:
    """The TTL a request may get: `grant_ttl` bounded by its SVID, user token and subject."""
    return grant_ttl(
        requested=ctx.ttl_requested,
        caps=caps,
        now=ctx.now.timestamp(),
        svid_expires_at=ctx.caller.expires_at.timestamp(),
        user_expires_at=_earliest(ctx.user.expires_at if ctx.user else None, ctx.not_after),
    )


class _Denial:
    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


class PolicyEngine:
    """Decides requests against one immutable `Policy`."""

    def __init__(
        self, policy: Policy, tool_scopes: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        """Index the policy.

        Args:
            policy: The validated policy.
            tool_scopes: Each tool's scopes from the tool catalogue (what a credential
                carries unless a rule narrows it).
        """
        self.policy = policy
        self._tool_scopes = {k: tuple(v) for k, v in (tool_scopes or {}).items()}
        self.registry = AgentRegistry(policy.agents)
        self._matched: dict[str, list[Rule]] = {}
        self._granted: dict[_GrantKey, tuple[tuple[ToolGrant, ...], tuple[ShadowDenial, ...]]] = {}
        self._exact: dict[str, list[Rule]] = {}
        self._prefix: dict[str, list[Rule]] = {}
        for rule in policy.rules:
            for pattern in rule.agents:
                index = self._prefix if pattern.is_prefix else self._exact
                index.setdefault(pattern.key, []).append(rule)

    def rules_for(self, spiffe_id: str) -> list[Rule]:
        """Rules whose agent patterns match `spiffe_id`, in file order."""
        found: dict[int, Rule] = {r.index: r for r in self._exact.get(spiffe_id, ())}
        slash = spiffe_id.find("/", len(_SCHEME))
        while slash != -1:
            for rule in self._prefix.get(spiffe_id[: slash + 1], ()):
                found[rule.index] = rule
            slash = spiffe_id.find("/", slash + 1)
        return [found[i] for i in sorted(found)]

    def decide(self, ctx: RequestContext, decision_id: str) -> Decision:
        """Decide a request; all tools must be allowed for the decision to allow.

        Args:
            ctx: The request context.
            decision_id: The id to give the decision.
        """
        grants, shadow = self._grants(ctx)
        reasons = tuple(dict.fromkeys(r for g in grants for r in g.reasons))
        messages = tuple(m for g in grants for m in g.messages)
        if not all(g.allowed for g in grants):
            return self.deny(decision_id, reasons, messages, tools=grants, would_deny=shadow)
        ttl = request_ttl(ctx, [g.max_ttl for g in grants])
        if ttl < 1:
            return self.deny(
                decision_id,
                LIFETIME_EXHAUSTED,
                LIFETIME_EXHAUSTED_MESSAGE,
                tools=grants,
                would_deny=shadow,
            )
        policy = self.policy
        return Decision(
            decision_id=decision_id,
            allow=True,
            policy_id=policy.id,
            policy_version=policy.version,
            ttl_granted=ttl,
            tools=grants,
            would_deny=shadow,
        )

    def _grants(
        self, ctx: RequestContext
    ) -> tuple[tuple[ToolGrant, ...], tuple[ShadowDenial, ...]]:
        """Each tool's grant, and the shadow denials, for this request.

        The answer depends only on the immutable policy and on the parts of the request
        the rules read: the agent, the tools, the user's issuer, tier and groups, the
        delegation depth, the requested TTL and scopes, and the time, but the time only
        through rules with time windows. Agents keep asking the same thing, so without
        such rules the answer is remembered under exactly those parts (bounded; a new
        policy is a new engine). The TTL and the expiries are computed per request.
        """
        agent = ctx.caller.spiffe_id
        rules = self._rules_of(agent)
        key: _GrantKey | None = None
        if not any(rule.time_windows for rule in rules):
            user = ctx.user
            key = (
                agent,
                ctx.tools,
                None if user is None else (user.issuer, user.tier, user.groups),
                len(ctx.actors),
                ctx.ttl_requested,
                ctx.scopes,
            )
            known = self._granted.get(key)
            if known is not None:
                return known
        shadow: list[ShadowDenial] = []
        answer = (tuple(self._tool(ctx, tool, rules, shadow) for tool in ctx.tools), tuple(shadow))
        if key is not None:
            _remember(self._granted, key, answer)
        return answer

    def _rules_of(self, agent: str) -> list[Rule]:
        rules = self._matched.get(agent)
        if rules is None:
            rules = self.rules_for(agent)
            _remember(self._matched, agent, rules)
        return rules

    def deny(
        self,
        decision_id: str,
        reasons: Sequence[str],
        messages: Sequence[str],
        *,
        tools: tuple[ToolGrant, ...] = (),
        would_deny: tuple[ShadowDenial, ...] = (),
    ) -> Decision:
        """A denial under this policy (also for refusals decided before the rules run)."""
        return Decision.denial(
            decision_id,
            policy_id=self.policy.id,
            policy_version=self.policy.version,
            reasons=reasons,
            messages=messages,
            tools=tools,
            would_deny=would_deny,
        )

    def _cap(self, rule: Rule, tool: str) -> int:
        policy = self.policy
        return min(
            rule.max_ttl_seconds or policy.default_max_ttl,
            policy.tool_max_ttl.get(tool, policy.default_max_ttl),
            MAX_CREDENTIAL_TTL,
        )

    def _conditions(self, rule: Rule, ctx: RequestContext, tool: str) -> list[_Denial]:
        failures = self._user_failures(rule, ctx)
        if rule.time_windows and not any(w.contains(ctx.now) for w in rule.time_windows):
            failures.append(_Denial("outside_time_window", f"rule {rule.id} does not apply now"))
        if rule.effect is Effect.ALLOW:
            cap = self._cap(rule, tool)
            if ctx.ttl_requested is not None and ctx.ttl_requested > cap:
                failures.append(
                    _Denial(
                        "ttl_exceeds_max",
                        f"requested TTL {ctx.ttl_requested} s exceeds the maximum {cap} s "
                        f"for {tool}",
                    )
                )
            allowed = set(self._allowed_scopes(rule, tool))
            if ctx.scopes is not None and not set(ctx.scopes) <= allowed:
                failures.append(
                    _Denial(
                        "scope_not_allowed",
                        f"requested scope is wider than rule {rule.id} allows for {tool}",
                    )
                )
        return failures

    def _user_failures(self, rule: Rule, ctx: RequestContext) -> list[_Denial]:
        cond, user = rule.user, ctx.user
        if user is None:
            # Conditions on the user make the rule about users: without one it does not
            # apply (an allow rule then fails closed, a deny rule simply does not match).
            about_users = any(
                c is not None for c in (cond.issuers, cond.tiers, cond.groups_any, cond.groups_all)
            )
            if cond.required or about_users:
                return [_Denial("user_required", f"rule {rule.id} requires a user token")]
            return []
        failures: list[_Denial] = []
        if cond.issuers is not None and user.issuer not in cond.issuers:
            failures.append(
                _Denial(
                    "user_issuer_not_allowed",
                    f"user issuer {user.issuer} not allowed by rule {rule.id}",
                )
            )
        if cond.tiers is not None and user.tier not in cond.tiers:
            failures.append(
                _Denial(
                    "user_tier_not_allowed",
                    f"user tier {user.tier!r} not allowed by rule {rule.id}",
                )
            )
        groups = set(user.groups)
        if (cond.groups_any is not None and not groups & cond.groups_any) or (
            cond.groups_all is not None and not cond.groups_all <= groups
        ):
            failures.append(
                _Denial("user_groups_not_allowed", f"user's groups do not satisfy rule {rule.id}")
            )
        max_depth = (
            rule.max_delegation_depth
            if rule.max_delegation_depth is not None
            else self.policy.default_max_delegation_depth
        )
        if len(ctx.actors) > max_depth:
            failures.append(
                _Denial(
                    "delegation_too_deep",
                    f"delegation chain has {len(ctx.actors)} earlier agents; "
                    f"rule {rule.id} allows {max_depth}",
                )
            )
        return failures

    def _allowed_scopes(self, rule: Rule, tool: str) -> tuple[str, ...]:
        # A rule can only narrow the tool's scopes; with none configured, it names them.
        scopes = self._tool_scopes.get(tool)
        if rule.scopes is None:
            return scopes or ()
        if scopes is None or not scopes:
            return tuple(sorted(rule.scopes))
        return tuple(s for s in scopes if s in rule.scopes)

    def _tool(
        self, ctx: RequestContext, tool: str, rules: list[Rule], shadow: list[ShadowDenial]
    ) -> ToolGrant:
        agent = ctx.caller.spiffe_id
        if self.registry.undeclared(agent, tool):
            # The registry is a guard in front of the rules: an agent that declares its
            # tools gets none other, whatever a broad rule (`tools: ["*"]`) would allow.
            return _denied(
                tool,
                [_Denial("tool_not_declared", f"agent {agent} does not declare tool {tool}")],
            )
        if not rules:
            return _denied(tool, [_Denial("agent_unknown", f"no policy rule names agent {agent}")])
        candidates = [r for r in rules if r.covers(tool)]
        for rule in (r for r in candidates if r.effect is Effect.DENY):
            if not self._conditions(rule, ctx, tool):
                denial = _Denial("denied_by_rule", f"rule {rule.id} denies {tool} to {agent}")
                if rule.mode is Mode.DRY_RUN:
                    shadow.append(ShadowDenial(rule.id, tool, denial.code, denial.message))
                    continue
                return _denied(tool, [denial])
        failures: list[_Denial] = []
        for rule in (r for r in candidates if r.effect is Effect.ALLOW):
            problems = self._conditions(rule, ctx, tool)
            if problems and rule.mode is Mode.DRY_RUN:
                shadow.extend(ShadowDenial(rule.id, tool, p.code, p.message) for p in problems)
            elif problems:
                failures.extend(problems)
                continue
            scopes = self._allowed_scopes(rule, tool)
            granted_scopes = tuple(ctx.scopes) if ctx.scopes is not None else scopes
            return ToolGrant(
                tool=tool,
                allowed=True,
                rule_id=rule.id,
                max_ttl=self._cap(rule, tool),
                scopes=granted_scopes,
                limits=rule.limits,
                require_approval=rule.require_approval,
            )
        if not failures:
            failures.append(
                _Denial("tool_not_allowed", f"tool {tool} is not allowed for agent {agent}")
            )
        return _denied(tool, failures)


_GrantKey = tuple[
    str,
    tuple[str, ...],
    tuple[str, str | None, tuple[str, ...]] | None,
    int,
    int | None,
    tuple[str, ...] | None,
]
_K = TypeVar("_K")
_V = TypeVar("_V")
MEMO_ENTRIES = 10_000


def _remember(memo: dict[_K, _V], key: _K, value: _V) -> None:
    """Bounded memo: full means start again (no agent mix can grow it without bound)."""
    if len(memo) >= MEMO_ENTRIES:
        memo.clear()
    memo[key] = value


def _earliest(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _denied(tool: str, denials: Iterable[_Denial]) -> ToolGrant:
    items = list(denials)
    return ToolGrant(
        tool=tool,
        allowed=False,
        rule_id=None,
        max_ttl=0,
        reasons=tuple(dict.fromkeys(d.code for d in items)),
        messages=tuple(dict.fromkeys(d.message for d in items)),
    )
