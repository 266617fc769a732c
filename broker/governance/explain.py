"""`broker audit explain`: what the policy in force at a moment would have decided, and why.

The policy in force at TIME is the last `policy.loaded` record at or before TIME (records
have whole-second timestamps; within a second, file order decides). Its content comes from
the versions kept beside the audit log (`policies/sha256-<hex>.<suffix>`), checked against
the hash the record names; a Rego version (`.rego`: one module; `.json`: its modules, data
document and query) is compiled again. The request is rebuilt from what the command is given: the
agent, the tool (or every tool the policy names), and optionally the user's subject, issuer,
tier and groups; no TTL (the cap applies). The agent's own issuances and denials around
TIME are listed from the log beside the answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from broker.domain import AuthMethod, Caller, Decision, RequestContext, UserContext
from broker.errors import ConfigError
from broker.governance.archive import PolicyArchive
from broker.policy.engine import PolicyEngine
from broker.policy.loader import load_policy

__all__ = ["Question", "explain", "parse_time", "read_records"]

_EVENTS = ("credential.issued", "credential.denied", "credential.failed")


@dataclass(frozen=True, slots=True)
class Question:
    """What `explain` is asked."""

    at: datetime
    agent: str
    tool: str | None = None
    user: str | None = None
    issuer: str | None = None
    tier: str | None = None
    groups: tuple[str, ...] = ()
    around: timedelta = timedelta(hours=1)


def parse_time(text: str) -> datetime:
    """An RFC 3339 / ISO 8601 instant with a zone (`2026-11-21T10:05:00Z`).

    Raises:
        ConfigError: Not such a time.
    """
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--at {text!r}: not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise ConfigError(f"--at {text!r}: give a time zone (e.g. a final Z)")
    return when


def read_records(files: Sequence[Path]) -> Iterator[dict[str, object]]:
    """The records of audit files, in order (unparseable lines are skipped)."""
    for path in files:
        with path.open("rb") as handle:
            for raw in handle:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record


def _ts(record: dict[str, object]) -> datetime | None:
    value = record.get("ts")
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _in_force(records: list[dict[str, object]], at: datetime) -> dict[str, object]:
    loaded = None
    for record in records:
        ts = _ts(record)
        if record.get("event") == "policy.loaded" and ts is not None and ts <= at:
            loaded = record
    if loaded is None:
        raise ConfigError(f"no policy.loaded record at or before {at.isoformat()}")
    return loaded


def _replay(
    archive: PolicyArchive, digest: str, suffix: str
) -> Callable[[RequestContext], Decision]:
    """A decider for the kept version: YAML for the rule engine; `.rego` or `.json` for Rego."""
    path = archive.path_of(digest, suffix)
    try:
        raw = archive.read(digest, suffix)
    except OSError as exc:
        raise ConfigError(f"the policy version sha256:{digest} is not kept ({exc})") from None
    if suffix == "yaml":
        engine = PolicyEngine(load_policy(path))
        return lambda ctx: engine.decide(ctx, "explain")
    from broker.policy.rego_decisions import RegoDecisions  # noqa: PLC0415 - an optional extra
    from broker.policy.rego_program import archived_sources, compile_rego  # noqa: PLC0415

    rego = RegoDecisions(compile_rego(archived_sources(raw, suffix, path)), {})
    return lambda ctx: rego.decide(ctx, "explain")


def _tools(archive: PolicyArchive, digest: str, suffix: str, agent: str) -> list[str]:
    if suffix != "yaml":
        raise ConfigError("give --tool: the tools of a Rego policy cannot be listed")
    engine = PolicyEngine(load_policy(archive.path_of(digest, suffix)))
    named = {t for r in engine.rules_for(agent) for t in r.tools if t != "*"}
    entry = engine.registry.entry_for(agent)
    named |= set(entry.declared_tools or ()) if entry else set()
    return sorted(named)


def _answer(tool: str, decision: Decision) -> dict[str, object]:
    return {
        "tool": tool,
        "decision": "allow" if decision.allow else "deny",
        "rules": list(decision.rule_ids),
        "reasons": list(decision.reasons),
        "messages": list(decision.messages),
        "ttl_granted": decision.ttl_granted,
        "would_deny": list(decision.shadow),
    }


def _issuer_of(records: list[dict[str, object]], agent: str, subject: str) -> str | None:
    for record in reversed(records):
        who, user = record.get("agent"), record.get("user")
        if (
            isinstance(who, dict)
            and who.get("spiffe_id") == agent
            and isinstance(user, dict)
            and user.get("sub") == subject
            and isinstance(user.get("iss"), str)
        ):
            return str(user["iss"])
    return None


def explain(files: Sequence[Path], policies: Path, question: Question) -> dict[str, object]:
    """The answer, as a JSON-ready object.

    Raises:
        ConfigError: No policy was in force at that time, or its content is not kept.
    """
    records = list(read_records(files))
    loaded = _in_force(records, question.at)
    target = loaded.get("target") if isinstance(loaded.get("target"), dict) else {}
    assert isinstance(target, dict)
    digest = str(target.get("hash", "")).removeprefix("sha256:")
    archived = str(target.get("archived") or f"sha256-{digest}.yaml")
    suffix = archived.rsplit(".", 1)[-1]
    archive = PolicyArchive(policies)
    user = None
    if question.user is not None:
        issuer = question.issuer or _issuer_of(records, question.agent, question.user) or ""
        user = UserContext(
            issuer,
            question.user,
            (question.at + timedelta(hours=1)).timestamp(),
            tier=question.tier,
            groups=question.groups,
        )
    tools = [question.tool] if question.tool else _tools(archive, digest, suffix, question.agent)
    trust_domain = question.agent.removeprefix("spiffe://").split("/", 1)[0]
    caller = Caller(
        question.agent, trust_domain, AuthMethod.X509_SVID, question.at + timedelta(hours=1)
    )
    answers = []
    if tools:
        decide = _replay(archive, digest, suffix)
        for tool in tools:
            ctx = RequestContext(caller, user, (tool,), None, question.at, "explain")
            answers.append(_answer(tool, decide(ctx)))
    low, high = question.at - question.around, question.at + question.around
    activity = []
    for record in records:
        ts, who = _ts(record), record.get("agent")
        if (
            record.get("event") in _EVENTS
            and ts is not None
            and low <= ts <= high
            and isinstance(who, dict)
            and who.get("spiffe_id") == question.agent
        ):
            activity.append(
                {
                    key: record.get(key)
                    for key in ("ts", "event", "decision_id", "tools", "decision", "reasons")
                }
                | {"policy": record.get("policy"), "user": record.get("user")}
            )
    policy = loaded.get("policy") if isinstance(loaded.get("policy"), dict) else {}
    return {
        "at": question.at.isoformat(),
        "agent": question.agent,
        "user": {"iss": user.issuer, "sub": user.subject} if user else None,
        "policy": {
            **(policy if isinstance(policy, dict) else {}),
            "hash": f"sha256:{digest}",
            "loaded_at": loaded.get("ts"),
        },
        "answers": answers,
        "activity": activity,
    }
