"""The broker's configuration: YAML parsed once into frozen, validated settings.

Every section is parsed by one function here, through a `Reader` that names the file and
the key in each error. Nothing else in the broker reads the YAML; everything receives the
`Settings` object (or the part it needs) by injection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from broker.config.reader import Reader, load_yaml_mapping
from broker.spiffe_id import parse_spiffe_id, parse_trust_domain

__all__ = [
    "JWT_SVID_ALGORITHMS",
    "MAX_BODY_BYTES",
    "AuditSettings",
    "AuthnSettings",
    "FederatedDomain",
    "FilesIdentitySettings",
    "IdentitySettings",
    "JwtSvidSettings",
    "ListenSettings",
    "MetricsSettings",
    "Settings",
    "StateSettings",
    "ToolSettings",
    "VaultSettings",
    "VaultToolSettings",
    "WorkloadApiSettings",
    "load_settings",
]

# The JWT-SVID specification (section 2.1) allows exactly these; never `none`, never HMAC.
JWT_SVID_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
)
MAX_JWT_LEEWAY_SECONDS = 60
MAX_BODY_BYTES = 64 * 1024
# Algorithms accepted for user tokens: asymmetric only, never `none` or HMAC.
USER_TOKEN_ALGORITHMS = ("EdDSA", *JWT_SVID_ALGORITHMS)
ISSUER_ALGORITHMS = ("EdDSA", "ES256")
MAX_CREDENTIAL_TTL = 300
TOOL_NAME_PATTERN = r"[a-z][a-z0-9_.-]{0,63}"


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """Where the HTTPS listener binds, and how it drains on SIGTERM.

    Attributes:
        drain_delay_seconds: After SIGTERM, how long /readyz answers 503 while new
            connections are still accepted (load balancers and Kubernetes endpoints catch up).
        shutdown_timeout_seconds: After the delay and the listener's close, how long
            in-flight requests get to finish before they are cancelled.
    """

    host: str = "127.0.0.1"
    port: int = 8443
    drain_delay_seconds: float = 5.0
    shutdown_timeout_seconds: float = 20.0


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The optional plain-HTTP listener serving only GET /metrics and /healthz (Prometheus)."""

    host: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes the pod IP
    port: int = 9090


@dataclass(frozen=True, slots=True)
class FilesIdentitySettings:
    """PEM/JWKS files, as spiffe-helper writes them; reloaded when they change."""

    svid: Path
    key: Path
    bundle: Path
    jwt_bundle: Path | None
    poll_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class WorkloadApiSettings:
    """The SPIFFE Workload API (SPIRE agent) endpoint."""

    socket: str | None
    timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class FederatedDomain:
    """A foreign trust domain whose SVIDs are accepted, each checked against its own bundle."""

    trust_domain: str
    bundle: Path | None = None
    jwt_bundle: Path | None = None


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """Where the broker's own SVID and the trust bundles come from."""

    source: Literal["files", "workload_api"]
    files: FilesIdentitySettings | None
    workload_api: WorkloadApiSettings | None
    federation: tuple[FederatedDomain, ...] = ()


@dataclass(frozen=True, slots=True)
class JwtSvidSettings:
    """How JWT-SVID bearers are validated."""

    audience: tuple[str, ...]
    algorithms: tuple[str, ...] = JWT_SVID_ALGORITHMS
    leeway_seconds: int = 30
    max_token_bytes: int = 8192


@dataclass(frozen=True, slots=True)
class AuthnSettings:
    """How callers authenticate."""

    jwt_svid: JwtSvidSettings
    trusted_proxies: frozenset[str] = frozenset()
    forwarded_client_cert_header: str = "x-forwarded-client-cert"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Where the policy comes from and how often its file is checked for changes."""

    file: Path
    watch_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class UserTokenIssuer:
    """An identity provider whose user tokens carry delegation context."""

    issuer: str
    audience: tuple[str, ...]
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwks_ca_file: Path | None = None
    algorithms: tuple[str, ...] = ("EdDSA", "ES256", "RS256", "PS256")
    leeway_seconds: int = 30
    tier_claim: str = "tier"
    groups_claim: str = "groups"
    jwks_refresh_seconds: int = 300


@dataclass(frozen=True, slots=True)
class JwtIssuerSettings:
    """The broker's own JWT issuer (credentials of `type: jwt` tools)."""

    issuer: str | None
    algorithm: str = "EdDSA"
    keys_file: Path | None = None
    auto_rotate: bool = True
    rotation_hours: float = 168.0
    publish_ahead_seconds: int = 0
    leeway_seconds: int = 60


@dataclass(frozen=True, slots=True)
class VaultToolSettings:
    """How a `type: vault` tool's credentials are made.

    Attributes:
        kind: `dynamic` (read `path`, e.g. `database/creds/ticketing`, or write it with
            `params`, e.g. `pki/issue/agents`: a leased secret),
            `token` (a child token with `policies`, through the `role` token role), or
            `kv` (the KV v2 secret at `mount`/`path`, handed over response-wrapped).
        path: The credentials path (dynamic) or the secret path in the mount (kv).
        mount: The KV v2 mount (kv).
        policies: The child token's policies (token).
        role: The token role child tokens are created through (token).
        num_uses: How many times a child token may be used; 0 for unlimited (token).
    """

    kind: Literal["dynamic", "token", "kv"]
    path: str | None = None
    method: Literal["read", "write"] = "read"
    params: tuple[tuple[str, str], ...] = ()
    mount: str = "secret"
    policies: tuple[str, ...] = ()
    role: str | None = None
    num_uses: int = 0


@dataclass(frozen=True, slots=True)
class ToolSettings:
    """A tool agents may get credentials for, and how its credentials are made."""

    name: str
    type: Literal["jwt", "vault"]
    audience: str | None = None
    scopes: tuple[str, ...] = ()
    vault: VaultToolSettings | None = None


@dataclass(frozen=True, slots=True)
class VaultSettings:
    """How the broker reaches and authenticates to Vault.

    Attributes:
        address: `https://` URL of Vault.
        ca_file: CA bundle that signed Vault's certificate (default: the system's).
        namespace: Vault Enterprise namespace, if any.
        auth_method: `cert` (mTLS with the broker's X.509-SVID), `jwt` (a JWT-SVID), or
            `token` (a static token from `token_file`: development only).
        auth_mount: Mount path of the auth method.
        auth_role: Role to log in as (`cert`: the certificate role; `jwt`: the role).
        jwt_audience: Audience of the JWT-SVID the broker presents (`jwt`).
        token_file: File holding a static token (`token`).
        timeout_seconds: Deadline of every Vault call.
        pool_size: Threads running hvac calls.
        breaker_failures: Consecutive failures that open the circuit breaker.
        breaker_reset_seconds: How long the breaker stays open before a trial call.
        reconcile_seconds: Interval of the lease reconciler.
    """

    address: str
    auth_method: Literal["cert", "jwt", "token"]
    auth_mount: str
    ca_file: Path | None = None
    namespace: str | None = None
    auth_role: str | None = None
    jwt_audience: str = "vault"
    token_file: Path | None = None
    timeout_seconds: float = 2.0
    pool_size: int = 8
    breaker_failures: int = 5
    breaker_reset_seconds: float = 10.0
    reconcile_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class StateSettings:
    """Where shared state lives: embedded SQLite (one process) or Redis (replicas)."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    path: Path | None = None
    url: str | None = None
    password_file: Path | None = None
    key_prefix: str = "broker:"
    agent_revocation_seconds: int = 30 * 86400
    jwt_svid_replay_protection: bool = False


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """The audit trail: where it goes and how hard it insists on durability."""

    sink: Literal["file", "stdout"] = "file"
    path: Path | None = None
    chain_id: str | None = None
    fsync: bool = True
    write_timeout_ms: int = 2000
    max_file_bytes: int = 100 * 1024 * 1024
    hmac_key_file: Path | None = None
    checkpoint_key_file: Path | None = None
    checkpoint_every: int = 1000


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration, validated."""

    source_file: Path
    trust_domain: str
    spiffe_id: str
    listen: ListenSettings
    identity: IdentitySettings
    authentication: AuthnSettings
    metrics: MetricsSettings | None = None
    policy: PolicySettings | None = None
    user_token_issuers: tuple[UserTokenIssuer, ...] = ()
    jwt_issuer: JwtIssuerSettings | None = None
    tools: tuple[ToolSettings, ...] = ()
    state: StateSettings = StateSettings()
    audit: AuditSettings = AuditSettings()
    vault: VaultSettings | None = None
    admins: frozenset[str] = frozenset()
    resource_servers: frozenset[str] = frozenset()
    log_level: str = "info"

    def tool(self, name: str) -> ToolSettings | None:
        """A tool by name."""
        return next((t for t in self.tools if t.name == name), None)

    @property
    def issuer_url(self) -> str:
        """The `iss` of broker-minted JWTs (default: the listener's URL)."""
        if self.jwt_issuer is not None and self.jwt_issuer.issuer:
            return self.jwt_issuer.issuer
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

    trust_domain = _trust_domain(root, "trust_domain")
    spiffe_id = _spiffe_id(root, "spiffe_id")
    if not spiffe_id.startswith(f"spiffe://{trust_domain}/"):
        raise root.error("spiffe_id", f"must be in trust domain {trust_domain!r}")

    settings = Settings(
        source_file=path,
        trust_domain=trust_domain,
        spiffe_id=spiffe_id,
        listen=_listen(root.section("listen")),
        metrics=_metrics(root.section("metrics")) if root.has("metrics") else None,
        identity=_identity(root.section("identity", required=True), trust_domain),
        authentication=_authentication(root.section("authentication", required=True)),
        policy=_policy(root.section("policy")) if root.has("policy") else None,
        user_token_issuers=_user_token_issuers(root),
        jwt_issuer=_jwt_issuer(root.section("jwt_issuer")) if root.has("jwt_issuer") else None,
        tools=_tools(root.section("tools")),
        state=_state(root.section("state")),
        audit=_audit(root.section("audit")),
        vault=_vault(root.section("vault")) if root.has("vault") else None,
        admins=frozenset(_spiffe_ids(root, "admins")),
        resource_servers=frozenset(_spiffe_ids(root, "resource_servers")),
        log_level=root.string("log_level", "info", choices=("debug", "info", "warning", "error")),
    )
    root.finish()
    if any(t.type == "jwt" for t in settings.tools) and settings.jwt_issuer is None:
        raise root.error("jwt_issuer", "is required when a tool has type 'jwt'")
    if any(t.type == "vault" for t in settings.tools) and settings.vault is None:
        raise root.error("vault", "is required when a tool has type 'vault'")
    if settings.metrics is not None and settings.metrics.port == settings.listen.port != 0:
        raise root.error("metrics.port", "must differ from listen.port")
    return settings


def _trust_domain(reader: Reader, name: str) -> str:
    value = reader.string(name)
    try:
        return parse_trust_domain(value).name
    except ValueError as exc:
        raise reader.error(name, str(exc)) from None


def _spiffe_id(reader: Reader, name: str) -> str:
    value = reader.string(name)
    try:
        return str(parse_spiffe_id(value))
    except ValueError as exc:
        raise reader.error(name, str(exc)) from None


def _spiffe_ids(reader: Reader, name: str) -> tuple[str, ...]:
    values = reader.strings(name, ())
    out = []
    for index, value in enumerate(values):
        try:
            out.append(str(parse_spiffe_id(value)))
        except ValueError as exc:
            raise reader.error(f"{name}[{index}]", str(exc)) from None
    return tuple(out)


def _listen(reader: Reader) -> ListenSettings:
    listen = ListenSettings(
        host=reader.string("host", "127.0.0.1"),
        port=reader.integer("port", 8443, minimum=0, maximum=65535),
        drain_delay_seconds=reader.number("drain_delay_seconds", 5.0, minimum=0, maximum=300),
        shutdown_timeout_seconds=reader.number(
            "shutdown_timeout_seconds", 20.0, minimum=1, maximum=600
        ),
    )
    reader.finish()
    return listen


def _metrics(reader: Reader) -> MetricsSettings:
    metrics = MetricsSettings(
        host=reader.string("host", "0.0.0.0"),  # noqa: S104 - Prometheus scrapes the pod IP
        port=reader.integer("port", 9090, minimum=0, maximum=65535),
    )
    reader.finish()
    return metrics


def _identity(reader: Reader, trust_domain: str) -> IdentitySettings:
    source = reader.string("source", choices=("files", "workload_api"))
    files: FilesIdentitySettings | None = None
    workload_api: WorkloadApiSettings | None = None
    if source == "files":
        section = reader.section("files", required=True)
        files = FilesIdentitySettings(
            svid=section.path("svid"),
            key=section.path("key"),
            bundle=section.path("bundle"),
            jwt_bundle=section.optional_path("jwt_bundle"),
            poll_seconds=section.number("poll_seconds", 2.0, minimum=0.1, maximum=3600),
        )
        section.finish()
        if reader.has("workload_api"):
            raise reader.error("workload_api", "is set but identity.source is 'files'")
    else:
        section = reader.section("workload_api")
        socket = section.optional_string("socket")
        if socket is not None and not socket.startswith("unix:"):
            raise section.error("socket", "must be a unix: address (py-spiffe supports no other)")
        workload_api = WorkloadApiSettings(
            socket=socket,
            timeout_seconds=section.number("timeout_seconds", 10.0, minimum=0.1, maximum=600),
        )
        section.finish()
        if reader.has("files"):
            raise reader.error("files", "is set but identity.source is 'workload_api'")

    federation: list[FederatedDomain] = []
    for item in reader.sections("federation"):
        domain = _trust_domain(item, "trust_domain")
        if domain == trust_domain:
            raise item.error("trust_domain", "is our own trust domain, not a federated one")
        bundle = item.optional_path("bundle")
        jwt_bundle = item.optional_path("jwt_bundle")
        if source == "files" and bundle is None and jwt_bundle is None:
            raise item.error("bundle", "is required with identity.source 'files'")
        if source == "workload_api" and (bundle or jwt_bundle):
            raise item.error("bundle", "comes from the Workload API with source 'workload_api'")
        item.finish()
        federation.append(FederatedDomain(domain, bundle, jwt_bundle))
    reader.finish()
    return IdentitySettings(source, files, workload_api, tuple(federation))  # type: ignore[arg-type]


def _authentication(reader: Reader) -> AuthnSettings:
    section = reader.section("jwt_svid", required=True)
    audience = section.strings("audience", non_empty=True)
    algorithms = section.strings(
        "algorithms", JWT_SVID_ALGORITHMS, choices=JWT_SVID_ALGORITHMS, non_empty=True
    )
    jwt_svid = JwtSvidSettings(
        audience=audience,
        algorithms=algorithms,
        leeway_seconds=section.integer(
            "leeway_seconds", 30, minimum=0, maximum=MAX_JWT_LEEWAY_SECONDS
        ),
        max_token_bytes=section.integer("max_token_bytes", 8192, minimum=512, maximum=65536),
    )
    section.finish()
    authn = AuthnSettings(
        jwt_svid=jwt_svid,
        trusted_proxies=frozenset(_spiffe_ids(reader, "trusted_proxies")),
        forwarded_client_cert_header=reader.string(
            "forwarded_client_cert_header", "x-forwarded-client-cert", pattern=r"[A-Za-z0-9-]+"
        ).lower(),
    )
    reader.finish()
    return authn


def _policy(reader: Reader) -> PolicySettings:
    policy = PolicySettings(
        file=reader.path("file"),
        watch_seconds=reader.number("watch_seconds", 2.0, minimum=0.1, maximum=3600),
    )
    reader.finish()
    return policy


def _url(reader: Reader, name: str, *, https_only: bool = True) -> str:
    value = reader.string(name, max_length=2048)
    parsed = urlsplit(value)
    schemes = ("https",) if https_only else ("https", "http")
    if parsed.scheme not in schemes or not parsed.netloc:
        raise reader.error(name, f"must be an absolute {' or '.join(schemes)} URL")
    return value


def _user_token_issuers(root: Reader) -> tuple[UserTokenIssuer, ...]:
    issuers: list[UserTokenIssuer] = []
    for item in root.sections("user_token_issuers"):
        issuer = item.string("issuer", max_length=2048)
        jwks_file = item.optional_path("jwks_file")
        jwks_url = _url(item, "jwks_url") if item.has("jwks_url") else None
        if (jwks_file is None) == (jwks_url is None):
            raise item.error("jwks_file", "exactly one of jwks_file and jwks_url is required")
        issuers.append(
            UserTokenIssuer(
                issuer=issuer,
                audience=item.strings("audience", non_empty=True),
                jwks_file=jwks_file,
                jwks_url=jwks_url,
                jwks_ca_file=item.optional_path("jwks_ca_file"),
                algorithms=item.strings(
                    "algorithms",
                    ("EdDSA", "ES256", "RS256", "PS256"),
                    choices=USER_TOKEN_ALGORITHMS,
                    non_empty=True,
                ),
                leeway_seconds=item.integer(
                    "leeway_seconds", 30, minimum=0, maximum=MAX_JWT_LEEWAY_SECONDS
                ),
                tier_claim=item.string("tier_claim", "tier"),
                groups_claim=item.string("groups_claim", "groups"),
                jwks_refresh_seconds=item.integer(
                    "jwks_refresh_seconds", 300, minimum=30, maximum=86400
                ),
            )
        )
        item.finish()
    names = [i.issuer for i in issuers]
    if len(set(names)) != len(names):
        raise root.error("user_token_issuers", "lists an issuer twice")
    return tuple(issuers)


def _jwt_issuer(reader: Reader) -> JwtIssuerSettings:
    issuer = JwtIssuerSettings(
        issuer=_url(reader, "issuer") if reader.has("issuer") else None,
        algorithm=reader.string("algorithm", "EdDSA", choices=ISSUER_ALGORITHMS),
        keys_file=reader.optional_path("keys_file"),
        auto_rotate=reader.boolean("auto_rotate", True),  # noqa: FBT003
        rotation_hours=reader.number("rotation_hours", 168.0, minimum=0.01, maximum=24 * 366),
        publish_ahead_seconds=reader.integer(
            "publish_ahead_seconds", 0, minimum=0, maximum=7 * 86400
        ),
        leeway_seconds=reader.integer(
            "leeway_seconds", 60, minimum=0, maximum=MAX_JWT_LEEWAY_SECONDS
        ),
    )
    reader.finish()
    return issuer


def _tools(reader: Reader) -> tuple[ToolSettings, ...]:
    tools: list[ToolSettings] = []
    for name in reader.names():
        if not re.fullmatch(TOOL_NAME_PATTERN, name):
            raise reader.error(name, f"is not a valid tool name ({TOOL_NAME_PATTERN})")
        item = reader.section(name)
        kind = item.string("type", choices=("jwt", "vault"))
        scopes = tuple(scope for value in item.strings("scope", ()) for scope in value.split())
        if kind == "jwt":
            tool = ToolSettings(
                name=name,
                type="jwt",
                audience=item.string("audience", max_length=2048),
                scopes=scopes,
            )
        else:
            tool = ToolSettings(
                name=name,
                type="vault",
                scopes=scopes,
                vault=_vault_tool(item.section("vault", required=True)),
            )
        item.finish()
        tools.append(tool)
    return tuple(tools)


def _state(reader: Reader) -> StateSettings:
    backend = reader.string("backend", "sqlite", choices=("sqlite", "redis"))
    if backend == "sqlite":
        path = reader.path("path", "state.db")
        url = None
    else:
        path = None
        url = reader.string("url", max_length=2048)
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise reader.error("url", "must be a redis://, rediss:// or unix:// URL")
    state = StateSettings(
        backend=backend,  # type: ignore[arg-type]
        path=path,
        url=url,
        password_file=reader.optional_path("password_file"),
        key_prefix=reader.string("key_prefix", "broker:", pattern=r"[A-Za-z0-9:_.-]{1,64}"),
        agent_revocation_seconds=reader.integer(
            "agent_revocation_seconds", 30 * 86400, minimum=60, maximum=366 * 86400
        ),
        jwt_svid_replay_protection=reader.boolean("jwt_svid_replay_protection", False),  # noqa: FBT003
    )
    reader.finish()
    return state


def _audit(reader: Reader) -> AuditSettings:
    sink = reader.string("sink", "file", choices=("file", "stdout"))
    audit = AuditSettings(
        sink=sink,  # type: ignore[arg-type]
        path=reader.path("path", "audit.log") if sink == "file" else reader.optional_path("path"),
        chain_id=reader.optional_string("chain_id"),
        fsync=reader.boolean("fsync", True),  # noqa: FBT003
        write_timeout_ms=reader.integer("write_timeout_ms", 2000, minimum=10, maximum=60000),
        max_file_bytes=reader.integer(
            "max_file_bytes", 100 * 1024 * 1024, minimum=4096, maximum=1 << 40
        ),
        hmac_key_file=reader.optional_path("hmac_key_file"),
        checkpoint_key_file=reader.optional_path("checkpoint_key_file"),
        checkpoint_every=reader.integer("checkpoint_every", 1000, minimum=1, maximum=1_000_000),
    )
    reader.finish()
    return audit


_VAULT_PATH = r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.@-]+)*"


def _vault_tool(reader: Reader) -> VaultToolSettings:
    kind = reader.string("kind", choices=("dynamic", "token", "kv"))
    if kind == "token":
        tool = VaultToolSettings(
            kind="token",
            policies=reader.strings("policies", non_empty=True, pattern=r"[A-Za-z0-9_.-]+"),
            role=reader.optional_string("role"),
            num_uses=reader.integer("num_uses", 0, minimum=0, maximum=1_000_000),
        )
    elif kind == "dynamic":
        params = reader.section("params")
        tool = VaultToolSettings(
            kind="dynamic",
            path=reader.string("path", pattern=_VAULT_PATH),
            method=reader.string("method", "read", choices=("read", "write")),  # type: ignore[arg-type]
            params=tuple((name, params.string(name, max_length=1024)) for name in params.names()),
        )
        params.finish()
    else:
        tool = VaultToolSettings(
            kind="kv",
            path=reader.string("path", pattern=_VAULT_PATH),
            mount=reader.string("mount", "secret", pattern=r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*"),
        )
    reader.finish()
    return tool


def _vault(reader: Reader) -> VaultSettings:
    address = _url(reader, "address")
    auth = reader.section("auth", required=True)
    method = auth.string("method", choices=("cert", "jwt", "token"))
    vault = VaultSettings(
        address=address.rstrip("/"),
        ca_file=reader.optional_path("ca_file"),
        namespace=reader.optional_string("namespace"),
        auth_method=method,  # type: ignore[arg-type]
        auth_mount=auth.string("mount", method if method != "token" else "token"),
        auth_role=auth.string("role")
        if method in {"cert", "jwt"}
        else auth.optional_string("role"),
        jwt_audience=auth.string("audience", "vault"),
        token_file=auth.path("token_file")
        if method == "token"
        else auth.optional_path("token_file"),
        timeout_seconds=reader.number("timeout_seconds", 2.0, minimum=0.1, maximum=60),
        pool_size=reader.integer("pool_size", 8, minimum=1, maximum=256),
        breaker_failures=reader.integer("breaker_failures", 5, minimum=1, maximum=1000),
        breaker_reset_seconds=reader.number(
            "breaker_reset_seconds", 10.0, minimum=0.1, maximum=3600
        ),
        reconcile_seconds=reader.number("reconcile_seconds", 30.0, minimum=0.1, maximum=3600),
    )
    auth.finish()
    reader.finish()
    return vault
