"""Audit records as OCSF events (Open Cybersecurity Schema Framework, schema 1.3.0).

Classes, and why:

- `auth.failed` -> **Authentication (3002)**, activity Logon (1), status Failure: a
  workload presented an identity (its SVID) that did not verify; the subject of an
  authentication attempt is exactly what this class's required `user` describes (the
  agent's SPIFFE ID as `user.uid`, type Service), and `service` names the broker.
- `credential.*`, `agent.revoked`, `policy.loaded` and the trail's own records ->
  **API Activity (6003)**: each is one call of the broker's API acting on a resource
  (a credential created, or refused; a credential or an agent revoked; a policy loaded).
  Its required `actor` (the agent, or the broker itself), `api` (`operation`) and
  `src_endpoint` (the caller's address) are what the records hold, and `resources`
  carries the tools and credential ids. Authorize Session (3003) was considered for
  issuance, but it reports privileges, groups or roles assigned to a new *logon
  session* and needs at least one of them: an agent's per-request credential is not a
  session, and a denial assigns nothing.

The broker's own fields (delegation chain, policy version, rules, TTLs, `would_deny`)
go in `unmapped`; nothing secret is in the trail to begin with.
"""

from __future__ import annotations

from datetime import datetime

from broker import __version__

__all__ = ["OCSF_VERSION", "to_ocsf"]

OCSF_VERSION = "1.3.0"
AUTHENTICATION = 3002
API_ACTIVITY = 6003
_CREATE, _READ, _UPDATE, _DELETE, _OTHER = 1, 2, 3, 4, 99
_INFORMATIONAL, _LOW, _MEDIUM = 1, 2, 3
_SUCCESS, _FAILURE = 1, 2
_API_ACTIVITY = {
    "credential.issued": (_CREATE, "POST /v1/credentials"),
    "credential.denied": (_CREATE, "POST /v1/credentials"),
    "credential.failed": (_CREATE, "POST /v1/credentials"),
    "credential.revoked": (_DELETE, "POST /v1/revoke"),
    "credential.revoke_refused": (_DELETE, "POST /v1/revoke"),
    "agent.revoked": (_UPDATE, "POST /v1/admin/agents/revoke"),
    "policy.loaded": (_UPDATE, "policy.load"),
}
_UNMAPPED = (
    "event",
    "delegation_chain",
    "tools",
    "ttl_requested",
    "ttl_granted",
    "decision",
    "reasons",
    "policy",
    "rules",
    "shadow",
    "would_deny",
    "credentials",
    "target",
    "session_id",
    "reason",
    "user",
    "chain",
    "seq",
    "prev_hash",
    "hash",
)


def _millis(ts: object) -> int:
    try:
        return int(datetime.fromisoformat(str(ts)).timestamp() * 1000)
    except ValueError:
        return 0


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _metadata(record: dict[str, object]) -> dict[str, object]:
    metadata: dict[str, object] = {
        "version": OCSF_VERSION,
        "product": {
            "name": "credential-broker",
            "vendor_name": "credential-broker",
            "version": __version__,
        },
        "original_time": record.get("ts"),
        "log_name": record.get("chain") or "audit",
    }
    if _text(record.get("hash")):
        metadata["uid"] = record["hash"]
    if _text(record.get("decision_id")):
        metadata["correlation_uid"] = record["decision_id"]
    if isinstance(record.get("seq"), int):
        metadata["sequence"] = record["seq"]
    return metadata


def _agent(record: dict[str, object]) -> dict[str, object] | None:
    agent = record.get("agent")
    if not isinstance(agent, dict) or not _text(agent.get("spiffe_id")):
        return None
    user: dict[str, object] = {
        "uid": agent["spiffe_id"],
        "name": agent["spiffe_id"],
        "type_id": 3,  # Service
        "type": "Service",
    }
    return user


def _endpoint(record: dict[str, object]) -> dict[str, object]:
    remote = _text(record.get("remote"))
    return {"ip": remote} if remote else {"name": "local"}


def to_ocsf(record: dict[str, object]) -> dict[str, object]:
    """One audit record as one OCSF event (Authentication or API Activity)."""
    event = str(record.get("event", ""))
    denied = record.get("decision") == "deny" or event in {
        "credential.failed",
        "credential.revoke_refused",
    }
    reasons = [str(r) for r in record.get("reasons") or [] if isinstance(r, str)]  # type: ignore[attr-defined]
    common: dict[str, object] = {
        "time": _millis(record.get("ts")),
        "metadata": _metadata(record),
        "status_id": _FAILURE if denied else _SUCCESS,
        "status": "Failure" if denied else "Success",
        "message": event,
        "unmapped": {k: record[k] for k in _UNMAPPED if record.get(k) not in (None, [], {})},
    }
    if reasons:
        common["status_detail"] = ", ".join(reasons)
    if event == "auth.failed":
        user = _agent(record) or {"name": "unidentified", "type_id": 0, "type": "Unknown"}
        activity, class_uid = 1, AUTHENTICATION
        body: dict[str, object] = {
            "user": user,
            "service": {"name": "credential-broker"},
            "src_endpoint": _endpoint(record),
            "is_remote": True,
            "severity_id": _MEDIUM,
        }
    else:
        activity, operation = _API_ACTIVITY.get(event, (_OTHER, event))
        class_uid = API_ACTIVITY
        acting = _agent(record)
        actor: dict[str, object] = {"user": acting} if acting else {"app_name": "credential-broker"}
        resources = [
            {"type": "tool", "name": str(t)}
            for t in record.get("tools") or []  # type: ignore[attr-defined]
        ] + [
            {"type": "credential", "uid": str(c.get("credential_id")), "name": str(c.get("tool"))}
            for c in record.get("credentials") or []  # type: ignore[attr-defined]
            if isinstance(c, dict)
        ]
        body = {
            "actor": actor,
            "api": {
                "operation": operation,
                "service": {"name": "credential-broker"},
                "request": {"uid": str(record.get("request_id") or record.get("hash") or "")},
            },
            "src_endpoint": _endpoint(record),
            "severity_id": _LOW if denied else _INFORMATIONAL,
        }
        if resources:
            body["resources"] = resources
    category = class_uid // 1000
    return {
        "class_uid": class_uid,
        "category_uid": category,
        "activity_id": activity,
        "type_uid": class_uid * 100 + activity,
        **common,
        **body,
    }
