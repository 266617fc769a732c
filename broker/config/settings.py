"""The broker's configuration: YAML parsed once into frozen, validated settings.

This module reads the top level (trust domain, listener, administrators, tools) and hands
each adapter's section to that adapter's own `config.py`; issuers and state stores are
found by kind in their registries. Every error names the file and the key, and keys no
one reads are refused. Nothing else in the broker reads the YAML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from broker.audit.config import AuditSettings, parse_audit
from broker.authn.config import AuthnSettings, parse_authentication
from broker.config.reader import Reader, load_yaml_mapping
from broker.constants import TOOL_NAME_PATTERN
from broker.context.config import UserTokenIssuer, parse_user_token_issuers
from broker.gateway.config import GatewaySettings, parse_gateway
from broker.governance.config import ApprovalSettings, parse_approvals
from broker.identity.config import IdentitySettings, parse_identity
from broker.issuers import ISSUERS
from broker.policy.config import PolicySettings, parse_policy
from broker.state import STATE_STORES
from broker.tracing import TracingSettings, parse_tracing

__all__ = [
    "ListenSettings",
    "MetricsSettings",
    "Settings",
    "StateSettings",
    "ToolSettings",
    "load_settings",
]

DEFAULT_AGENT_REVOCATION_SECONDS = 30 * 86400
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8443
DEFAULT_STATE_BACKEND = "sqlite"
DEFAULT_DRAIN_DELAY_SECONDS = 5.0
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 20.0
DEFAULT_METRICS_HOST = "0.0.0.0"  # noqa: S104 - Prometheus scrapes the pod IP
DEFAULT_METRICS_PORT = 9090


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """Where the HTTPS listener binds, and how it drains on SIGTERM.

    Attributes:
        drain_delay_seconds: After SIGTERM, how long /readyz answers 503 while new
            connections are still accepted (load balancers and Kubernetes endpoints catch up).
        shutdown_timeout_seconds: After the delay and the listener's close, how long
            in-flight requests get to finish before they are cancelled.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    drain_delay_seconds: float = DEFAULT_DRAIN_DELAY_SECONDS
    shutdown_timeout_seconds: float = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The optional plain-HTTP listener serving only GET /metrics and /healthz (Prometheus)."""

    host: str = DEFAULT_METRICS_HOST
    port: int = DEFAULT_METRICS_PORT


@dataclass(frozen=True, slots=True)
class ToolSettings:
    """A tool agents may get credentials for, and which issuer makes them.

    Attributes:
        name: The tool's name in requests and policies.
        type: The issuer kind (`jwt`, `vault`, ...).
        audience: The audience URI its tokens carry, if its credentials are tokens.
        scopes: The scopes its credentials carry unless a rule narrows them.
        options: The issuer's own per-tool settings.
    """

    name: str
    type: str
    audience: str | None = None
    scopes: tuple[str, ...] = ()
    options: object = None


@dataclass(frozen=True, slots=True)
class StateSettings:
    """The `state:` section: which store, and what the broker keeps there.

    Attributes:
        backend: The store kind (`sqlite`, `redis`).
        options: The store's own settings (its file, its URL).
        agent_revocation_seconds: How long a revoked agent stays refused.
        jwt_svid_replay_protection: Accept each JWT-SVID `jti` once.
    """

    backend: str = DEFAULT_STATE_BACKEND
    options: object = None
    agent_revocation_seconds: int = DEFAULT_AGENT_REVOCATION_SECONDS
    jwt_svid_replay_protection: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration, validated."""

    source_file: Path
    trust_domain: str
    spiffe_id: str
    listen: ListenSettings
    identity: IdentitySettings
    authentication: AuthnSettings
    state: StateSettings
    policy: PolicySettings | None = None
    user_token_issuers: tuple[UserTokenIssuer, ...] = ()
    issuers: Mapping[str, object] = field(default_factory=dict)
    tools: tuple[ToolSettings, ...] = ()
    audit: AuditSettings = field(default_factory=AuditSettings)
    admins: frozenset[str] = frozenset()
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    resource_servers: frozenset[str] = frozenset()
    log_level: str = "info"
    metrics: MetricsSettings | None = None
    workers: int = 1  # processes serving this configuration (`broker serve --workers`)
    worker_index: int = 0  # which of them this process is
    tracing: TracingSettings | None = None
    gateway: GatewaySettings | None = None

    def tool(self, name: str) -> ToolSettings | None:
        """A tool by name."""
        return next((t for t in self.tools if t.name == name), None)

    @property
    def default_issuer(self) -> str:
        """The `iss` of broker-minted tokens unless configured: the listener's URL."""
        host = self.listen.host
        host = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{self.listen.port}"

    @property
    def trusted_domains(self) -> frozenset[str]:
        """Our own trust domain and every federated one."""
        return frozenset({self.trust_domain, *(f.trust_domain for f in self.identity.federation)})


def load_settings(path: Path) -> Settings:
    """Load and validate a configuration file.

    Args:
        path: The YAML file.

    Returns:
        The validated settings.

    Raises:
        ConfigError: Naming the file and the offending key.
    """
    path = path.resolve() if path.exists() else path
    data, _raw = load_yaml_mapping(path, what="configuration")
    root = Reader(path, data)

    trust_domain = root.trust_domain("trust_domain")
    spiffe_id = root.spiffe_id("spiffe_id")
    if not spiffe_id.startswith(f"spiffe://{trust_domain}/"):
        raise root.error("spiffe_id", f"must be in trust domain {trust_domain!r}")

    issuers = {
        factory.kind: factory.parse(root.section(factory.section))
        for factory in ISSUERS
        if root.has(factory.section)
    }
    settings = Settings(
        source_file=path,
        trust_domain=trust_domain,
        spiffe_id=spiffe_id,
        listen=_listen(root.section("listen")),
        identity=parse_identity(root.section("identity", required=True), trust_domain),
        authentication=parse_authentication(root.section("authentication", required=True)),
        state=_state(root.section("state")),
        policy=parse_policy(root.section("policy")) if root.has("policy") else None,
        user_token_issuers=parse_user_token_issuers(root, "user_token_issuers"),
        issuers=issuers,
        tools=_tools(root.section("tools")),
        audit=parse_audit(root.section("audit")),
        admins=frozenset(root.spiffe_ids("admins")),
        approvals=parse_approvals(root.section("approvals")),
        resource_servers=frozenset(root.spiffe_ids("resource_servers")),
        log_level=root.string("log_level", "info", choices=("debug", "info", "warning", "error")),
        metrics=_metrics(root.section("metrics")) if root.has("metrics") else None,
        tracing=parse_tracing(root.section("tracing")) if root.has("tracing") else None,
    )
    if root.has("gateway"):
        gateway = parse_gateway(
            root.section("gateway"), {t.name: t.audience for t in settings.tools}
        )
        if any(r.key_source.kind == "vault" for r in gateway.routes.values()) and (
            "vault" not in issuers
        ):
            raise root.error("vault", "is required when a gateway route reads its key from Vault")
        settings = replace(settings, gateway=gateway)
    root.finish()
    if settings.metrics is not None and settings.metrics.port == settings.listen.port != 0:
        raise root.error("metrics.port", "must differ from listen.port")
    for tool in settings.tools:
        if tool.type not in issuers:
            section = ISSUERS.get(tool.type).section
            raise root.error(section, f"is required when a tool has type {tool.type!r}")
    return settings


def _listen(reader: Reader) -> ListenSettings:
    listen = ListenSettings(
        host=reader.string("host", DEFAULT_HOST),
        port=reader.integer("port", DEFAULT_PORT, minimum=0, maximum=65535),
        drain_delay_seconds=reader.number(
            "drain_delay_seconds", DEFAULT_DRAIN_DELAY_SECONDS, minimum=0, maximum=300
        ),
        shutdown_timeout_seconds=reader.number(
            "shutdown_timeout_seconds", DEFAULT_SHUTDOWN_TIMEOUT_SECONDS, minimum=1, maximum=600
        ),
    )
    reader.finish()
    return listen


def _metrics(reader: Reader) -> MetricsSettings:
    metrics = MetricsSettings(
        host=reader.string("host", DEFAULT_METRICS_HOST),
        port=reader.integer("port", DEFAULT_METRICS_PORT, minimum=0, maximum=65535),
    )
    reader.finish()
    return metrics


def _tools(reader: Reader) -> tuple[ToolSettings, ...]:
    tools: list[ToolSettings] = []
    for name in reader.names():
        if not re.fullmatch(TOOL_NAME_PATTERN, name):
            raise reader.error(name, f"is not a valid tool name ({TOOL_NAME_PATTERN})")
        item = reader.section(name)
        kind = item.string("type", choices=ISSUERS.kinds())
        scopes = tuple(scope for value in item.strings("scope", ()) for scope in value.split())
        options = ISSUERS.get(kind).parse_tool(item)
        item.finish()
        tools.append(ToolSettings(name, kind, options.audience, scopes, options.options))
    return tuple(tools)


def _state(reader: Reader) -> StateSettings:
    backend = reader.string("backend", DEFAULT_STATE_BACKEND, choices=STATE_STORES.kinds())
    state = StateSettings(
        backend=backend,
        options=STATE_STORES.get(backend).parse(reader),
        agent_revocation_seconds=reader.integer(
            "agent_revocation_seconds",
            DEFAULT_AGENT_REVOCATION_SECONDS,
            minimum=60,
            maximum=366 * 86400,
        ),
        jwt_svid_replay_protection=reader.boolean("jwt_svid_replay_protection", False),  # noqa: FBT003
    )
    reader.finish()
    return state
