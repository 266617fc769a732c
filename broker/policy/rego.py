"""The Rego engine as the broker's `PolicyDecider` (embedded: `regopy`, rego-cpp).

`policy: {engine: rego, module: FILE | bundle: DIR, query: data.broker.decision}`.
The module(s) are compiled once per load into a bundle with the query as its entrypoint
(`query_bundle_entrypoint`: tens of microseconds, where a bare `query` re-plans every
time); the files are watched and reloaded like the rule engine's, validated first (a
module that does not compile, or a query it does not define, keeps the running policy).

Every request is decided on the same input document (`input_document`); the result is
read as plain JSON from the output's text: `Output.binding()` is never called, because on
an unbound name rego-cpp aborts the whole process. Default deny: an undefined result, a
result that is not an object, or a runtime error denies (`policy_undefined`,
`policy_error`). Caps are enforced here too: whatever the policy returns, a TTL over 300 s
or over a tool's cap is never granted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from broker.constants import MAX_CREDENTIAL_TTL
from broker.domain import Decision, Limit, RequestContext, ShadowDenial, ToolGrant
from broker.errors import ConfigError
from broker.policy.config import PolicySettings
from broker.policy.engine import (
    LIFETIME_EXHAUSTED,
    LIFETIME_EXHAUSTED_MESSAGE,
    PolicyEngine,
    request_ttl,
)
from broker.policy.reloader import NO_POLICY, FollowsFiles, LoadListener, PolicyVersion
from broker.typing import Clock

__all__ = ["RegoPolicy", "RegoProgram", "compile_rego", "input_document"]

log = structlog.get_logger(__name__)

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PER = frozenset({"agent", "user", "tool"})
_MAX_TEXT = 512


@dataclass(frozen=True, slots=True)
class RegoProgram:
    """One compiled load of the Rego policy."""

    id: str
    declared_version: str
    content_hash: str
    raw: bytes
    bundle: Any
    entrypoint: str

    @property
    def version(self) -> str:
        """Declared version plus content hash, like the rule engine's."""
        return f"{self.declared_version}+sha256:{self.content_hash[:12]}"


def _sources(settings: PolicySettings) -> tuple[dict[str, str], Any]:
    """The modules by name and the data document, read from `module` or `bundle`."""
    try:
        if settings.module is not None:
            return {settings.module.name: settings.module.read_text()}, None
        assert settings.bundle is not None
        modules = {p.name: p.read_text() for p in sorted(settings.bundle.glob("*.rego"))}
        data_file = settings.bundle / "data.json"
        data = json.loads(data_file.read_text()) if data_file.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{settings.module or settings.bundle}: cannot read: {exc}") from None
    if not modules:
        raise ConfigError(f"{settings.bundle}: no .rego files")
    return modules, data


def _rego_error(exc: Exception) -> str:
    # rego-cpp errors carry a whole AST dump; the messages and positions are what matter.
    messages = re.findall(r"errormsg \d+:([^)]*)\)", str(exc))
    return "; ".join(dict.fromkeys(messages)) or str(exc).splitlines()[0][:_MAX_TEXT]


def compile_rego(settings: PolicySettings) -> RegoProgram:
    """Read and compile the policy once.

    Raises:
        ConfigError: Unreadable files, a module that does not compile, or a query it does
            not define.
    """
    from regopy import Input, Interpreter, RegoError  # noqa: PLC0415 - an optional extra

    where = settings.module or settings.bundle
    modules, data = _sources(settings)
    package_path = settings.query.removeprefix("data.").split(".")
    entrypoint = "/".join(package_path)
    meta_entrypoint = "/".join([*package_path[:-1], "policy"])
    raw = (
        next(iter(modules.values())).encode()
        if settings.module is not None
        else json.dumps({"modules": modules, "data": data}, sort_keys=True).encode()
    )
    builder = Interpreter()
    try:
        if data is not None:
            builder.add_data(data)
        for name, text in modules.items():
            builder.add_module(name, text)
        bundle = builder.build(None, [entrypoint, meta_entrypoint])
    except RegoError as exc:
        raise ConfigError(f"{where}: {_rego_error(exc)}") from None
    if not bundle.ok():
        raise ConfigError(f"{where}: the Rego policy does not compile")
    probe = Interpreter()
    probe.set_input(Input({}))
    meta = _value(probe.query_bundle_entrypoint(bundle, meta_entrypoint))
    meta = meta if isinstance(meta, dict) else {}
    policy_id = meta.get("id")
    version = meta.get("version")
    return RegoProgram(
        id=policy_id if isinstance(policy_id, str) and policy_id else "rego",
        declared_version=str(version) if isinstance(version, str | int) else "0",
        content_hash=hashlib.sha256(raw).hexdigest(),
        raw=raw,
        bundle=bundle,
        entrypoint=entrypoint,
    )


def _value(output: Any) -> object:  # noqa: ANN401 - regopy is untyped
    """The query's value from the output's JSON text; None when undefined or an error."""
    if not output.ok():
        return None
    results = output.results
    if not results or not results[0].expressions:
        return None
    value: object = results[0].expressions[0]
    return value


def input_document(ctx: RequestContext) -> dict[str, object]:
    """The input every request is decided on (the same shape for every request)."""
    user = ctx.user
    now = ctx.now
    return {
        "caller": {
            "spiffe_id": ctx.caller.spiffe_id,
            "trust_domain": ctx.caller.trust_domain,
            "method": str(ctx.caller.method),
            "via_proxy": ctx.caller.via_proxy,
        },
        "user": (
            {
                "iss": user.issuer,
                "sub": user.subject,
                "tier": user.tier,
                "groups": list(user.groups),
                "exp": int(user.expires_at),
            }
            if user is not None
            else None
        ),
        "actors": list(ctx.actors),
        "delegation_chain": list(ctx.delegation_chain),
        "tools": list(ctx.tools),
        "ttl_requested": ctx.ttl_requested,
        "scopes": list(ctx.scopes) if ctx.scopes is not None else None,
        "time": {
            "unix": int(now.timestamp()),
            "rfc3339": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "weekday": _WEEKDAYS[now.weekday()],
            "hour": now.hour,
            "minute": now.minute,
        },
    }


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


class RegoPolicy(FollowsFiles):
    """A `PolicyDecider`: an embedded Rego policy, compiled once per load, following its files."""

    def __init__(
        self,
        settings: PolicySettings,
        *,
        tool_scopes: Mapping[str, Sequence[str]],
        clock: Clock,
    ) -> None:
        """Compile the policy.

        Raises:
            ConfigError: The policy cannot be compiled (the broker must not start).
        """
        from regopy import Input, Interpreter  # noqa: PLC0415 - an optional extra

        self._settings = settings
        self._scopes = {k: tuple(v) for k, v in tool_scopes.items()}
        self._clock = clock
        self._input = Input
        self._interpreter = Interpreter()
        self._program = compile_rego(settings)
        self._watch_seconds = settings.watch_seconds
        self._stamp = self._stat()
        self._task: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        self._listeners: list[LoadListener] = []
        self.last_error: str | None = None
        self.engine = PolicyEngine(NO_POLICY)  # no YAML registry with the Rego engine
        log.info("rego policy loaded", policy_id=self._program.id, version=self._program.version)

    @property
    def program(self) -> RegoProgram:
        """The running compiled policy."""
        return self._program

    @property
    def version(self) -> tuple[str, str]:
        """The running policy's id and version."""
        return self._program.id, self._program.version

    def _loaded(self) -> PolicyVersion:
        program = self._program
        suffix = "rego" if self._settings.module is not None else "json"
        return PolicyVersion(program.id, program.version, program.content_hash, program.raw, suffix)

    async def decide(self, ctx: RequestContext, decision_id: str) -> Decision:
        """Decide on the input document (in memory: no I/O; runs on the event loop)."""
        program = self._program
        self._interpreter.set_input(self._input(input_document(ctx)))
        try:
            output = self._interpreter.query_bundle_entrypoint(program.bundle, program.entrypoint)
        except Exception as exc:  # noqa: BLE001 - any engine failure denies, logged once here
            log.error("rego evaluation failed", reason=_rego_error(exc))  # noqa: TRY400
            return self.deny(decision_id, ("policy_error",), ("the policy could not be evaluated",))
        if not output.ok():
            log.error("rego evaluation failed", reason=str(output)[:_MAX_TEXT])
            return self.deny(decision_id, ("policy_error",), ("the policy could not be evaluated",))
        return self._decision(ctx, decision_id, _value(output))

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
                decision_id,
                LIFETIME_EXHAUSTED,
                LIFETIME_EXHAUSTED_MESSAGE,
                would_deny=would_deny,
            )
        return Decision(
            decision_id=decision_id,
            allow=True,
            policy_id=self._program.id,
            policy_version=self._program.version,
            ttl_granted=ttl,
            tools=tuple(grants),
            would_deny=would_deny,
        )

    def _grant(
        self, ctx: RequestContext, tool: str, grant: object, overall: int | None
    ) -> ToolGrant | tuple[str, str]:
        """One tool's grant, or the (reason, message) refusing it."""
        if not isinstance(grant, dict):
            return ("tool_not_allowed", f"the policy does not grant {tool}")
        caps = [MAX_CREDENTIAL_TTL]
        caps += [c for c in (_int(grant.get("max_ttl")), overall) if c is not None]
        cap = max(0, min(caps))
        if ctx.ttl_requested is not None and ctx.ttl_requested > cap:
            message = f"requested TTL {ctx.ttl_requested} s exceeds the maximum {cap} s for {tool}"
            return ("ttl_exceeds_max", message)
        allowed = (
            _strings(grant["scopes"])
            if isinstance(grant.get("scopes"), list)
            else self._scopes.get(tool, ())
        )
        if ctx.scopes is not None and not set(ctx.scopes) <= set(allowed):
            return ("scope_not_allowed", f"requested scope is wider than granted for {tool}")
        limits = _limits(grant.get("limits"))
        if limits is None:
            return ("policy_error", f"the policy's limits for {tool} are invalid")
        rule = grant.get("rule")
        return ToolGrant(
            tool=tool,
            allowed=True,
            rule_id=str(rule)[:_MAX_TEXT] if isinstance(rule, str) else "rego",
            max_ttl=cap,
            scopes=tuple(ctx.scopes) if ctx.scopes is not None else allowed,
            limits=limits,
        )

    def deny(
        self,
        decision_id: str,
        reasons: Sequence[str],
        messages: Sequence[str],
        *,
        would_deny: tuple[ShadowDenial, ...] = (),
    ) -> Decision:
        """A denial under the running policy."""
        return Decision(
            decision_id=decision_id,
            allow=False,
            policy_id=self._program.id,
            policy_version=self._program.version,
            ttl_granted=0,
            tools=(),
            reasons=tuple(reasons),
            messages=tuple(messages),
            would_deny=would_deny,
        )

    # -- reloading (as the rule engine does) -------------------------------------------------

    def _files(self) -> list[Path]:
        settings = self._settings
        if settings.module is not None:
            return [settings.module]
        assert settings.bundle is not None
        return [*sorted(settings.bundle.glob("*.rego")), settings.bundle / "data.json"]

    def _stat(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for path in self._files():
            try:
                st = path.stat()
            except OSError:
                stamps.append(None)
                continue
            stamps.append((st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def reload(self) -> bool:
        """Compile the files again; keep the running policy if they do not compile.

        Returns:
            Whether a new policy is now running.
        """
        self._stamp = self._stat()
        try:
            program = compile_rego(self._settings)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error(  # noqa: TRY400 - the message is the reason
                "policy reload rejected; keeping the running policy",
                reason=str(exc),
                running_version=self._program.version,
            )
            return False
        self.last_error = None
        if program.version == self._program.version:
            return False
        self._program = program
        log.info("rego policy reloaded", policy_id=program.id, version=program.version)
        return True
