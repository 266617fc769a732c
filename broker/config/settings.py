"""The broker's configuration: YAML parsed once into frozen, validated settings.

Every section is parsed by one function here, through a `Reader` that names the file and
the key in each error. Nothing else in the broker reads the YAML; everything receives the
`Settings` object (or the part it needs) by injection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from broker.config.reader import Reader, load_yaml_mapping
from broker.spiffe_id import parse_spiffe_id, parse_trust_domain

__all__ = [
    "JWT_SVID_ALGORITHMS",
    "MAX_BODY_BYTES",
    "AuthnSettings",
    "FederatedDomain",
    "FilesIdentitySettings",
    "IdentitySettings",
    "JwtSvidSettings",
    "ListenSettings",
    "Settings",
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


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """Where the HTTPS listener binds."""

    host: str = "127.0.0.1"
    port: int = 8443


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
class Settings:
    """The whole configuration, validated."""

    source_file: Path
    trust_domain: str
    spiffe_id: str
    listen: ListenSettings
    identity: IdentitySettings
    authentication: AuthnSettings
    admins: frozenset[str] = frozenset()
    log_level: str = "info"

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
        identity=_identity(root.section("identity", required=True), trust_domain),
        authentication=_authentication(root.section("authentication", required=True)),
        admins=frozenset(_spiffe_ids(root, "admins")),
        log_level=root.string("log_level", "info", choices=("debug", "info", "warning", "error")),
    )
    root.finish()
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
    )
    reader.finish()
    return listen


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
