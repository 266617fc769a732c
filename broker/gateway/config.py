"""The `gateway:` section: the gateway's listener, its limits, and its routes.

A route forwards `https://GATEWAY/<route>/<path>` to `<upstream>/<path>` for agents holding
a broker credential for its tool, with the real upstream key added from a key source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from broker.config.reader import Reader
from broker.constants import TOOL_NAME_PATTERN

__all__ = [
    "BudgetSettings",
    "GatewaySettings",
    "KeySourceSettings",
    "Price",
    "RouteSettings",
    "parse_gateway",
]

DEFAULT_PORT = 8444
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class TokenHeader(StrEnum):
    """Where the agent's broker credential (and the upstream's key) travel."""

    AUTHORIZATION = "authorization"  # `Authorization: Bearer <value>`
    X_API_KEY = "x-api-key"


@dataclass(frozen=True, slots=True)
class KeySourceSettings:
    """Where a route's real upstream key comes from.

    Attributes:
        kind: `vault` (a KV v2 secret, read with the broker's Vault client) or `file`.
        path: The KV path under `mount` (vault), or the file holding the key (file).
        mount: The KV v2 mount (vault).
        field: The field of the KV secret holding the key (vault).
        cache_seconds: How long a read key is reused: a rotated key is picked up within it.
    """

    kind: str
    path: str
    mount: str = "secret"
    field: str = "api_key"
    cache_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class Price:
    """What one token of a model costs, in micro-units (e.g. micro-dollars)."""

    input_micros: int
    output_micros: int


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """A budget over a fixed window, bound to the agent, the user or the whole route.

    Attributes:
        per: `agent`, `user` or `route`.
        window_seconds: The window.
        requests: Requests allowed per window, if limited.
        spend_micros: Spend allowed per window in micro-units, if limited.
    """

    per: str
    window_seconds: int
    requests: int | None = None
    spend_micros: int | None = None


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """One upstream reachable through the gateway.

    Attributes:
        name: The first path segment of the gateway URL.
        tool: The broker tool whose credential the route accepts (its `aud`).
        upstream: The upstream base URL (`https://`, or `http://` on loopback).
        key_header: The header the upstream expects its key in (and the agent sends its
            broker credential in).
        key_source: Where the real key comes from.
        methods: Allowed HTTP methods.
        path_prefixes: Allowed path prefixes (below the route, starting with `/`).
        models: The model allow-list (JSON body `model`), if any: the request body is then
            buffered (up to the body limit) to read it.
        prices: Per model prices, for spend budgets.
        budgets: Request-count and spend budgets.
        ca_file: The CA bundle the upstream's certificate chains to (default: the system's).
    """

    name: str
    tool: str
    upstream: str
    key_header: TokenHeader
    key_source: KeySourceSettings
    methods: frozenset[str]
    path_prefixes: tuple[str, ...]
    models: frozenset[str] | None = None
    prices: Mapping[str, Price] = field(default_factory=dict)
    budgets: tuple[BudgetSettings, ...] = ()
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The gateway's listener, timeouts, pool and routes.

    Attributes:
        host: Listener address.
        port: Listener port.
        require_client_certificate: Refuse callers without an X.509-SVID (mTLS); otherwise
            mTLS is optional, but a token bound by `cnf` still needs its certificate.
        max_body_bytes: Largest request body forwarded.
        connect_timeout_seconds: Connecting to the upstream.
        first_byte_timeout_seconds: From the request's start (after at most
            `connect_timeout_seconds` of connecting; a streamed upload counts) to the
            upstream's response headers.
        idle_timeout_seconds: Longest silence while a body streams either way.
        pool_size: Upstream connections kept (keep-alive), across routes.
        token_cache_entries: Verified credentials remembered (by digest, until expiry).
        routes: The routes by name.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    require_client_certificate: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    connect_timeout_seconds: float = 5.0
    first_byte_timeout_seconds: float = 60.0
    idle_timeout_seconds: float = 60.0
    pool_size: int = 100
    token_cache_entries: int = 10_000
    routes: Mapping[str, RouteSettings] = field(default_factory=dict)


def parse_gateway(reader: Reader, tools: Mapping[str, str | None]) -> GatewaySettings:
    """Parse the `gateway:` section.

    Args:
        reader: The section.
        tools: Configured tool names and their audiences (a route's tool must be one).

    Raises:
        ConfigError: Naming the file and the key.
    """
    routes: dict[str, RouteSettings] = {}
    routes_reader = reader.section("routes", required=True)
    for name in routes_reader.names():
        if not re.fullmatch(TOOL_NAME_PATTERN, name):
            raise routes_reader.error(name, f"is not a valid route name ({TOOL_NAME_PATTERN})")
        routes[name] = _route(name, routes_reader.section(name), tools)
    if not routes:
        raise reader.error("routes", "must name at least one route")
    gateway = GatewaySettings(
        host=reader.string("host", "127.0.0.1"),
        port=reader.integer("port", DEFAULT_PORT, minimum=0, maximum=65535),
        require_client_certificate=reader.boolean("require_client_certificate", False),  # noqa: FBT003
        max_body_bytes=reader.integer(
            "max_body_bytes", DEFAULT_MAX_BODY_BYTES, minimum=1024, maximum=1 << 30
        ),
        connect_timeout_seconds=reader.number(
            "connect_timeout_seconds", 5.0, minimum=0.01, maximum=300
        ),
        first_byte_timeout_seconds=reader.number(
            "first_byte_timeout_seconds", 60.0, minimum=0.01, maximum=3600
        ),
        idle_timeout_seconds=reader.number(
            "idle_timeout_seconds", 60.0, minimum=0.01, maximum=3600
        ),
        pool_size=reader.integer("pool_size", 100, minimum=1, maximum=10_000),
        token_cache_entries=reader.integer("token_cache_entries", 10_000, minimum=0),
        routes=routes,
    )
    reader.finish()
    return gateway


def _route(name: str, reader: Reader, tools: Mapping[str, str | None]) -> RouteSettings:
    tool = reader.string("tool")
    if tool not in tools:
        raise reader.error("tool", f"names no configured tool ({tool!r})")
    if not tools[tool]:
        raise reader.error("tool", f"tool {tool!r} has no audience (the gateway needs a JWT tool)")
    upstream = reader.url("upstream", https_only=False).rstrip("/")
    if not upstream.startswith(
        ("https://", "http://127.0.0.1", "http://localhost", "http://[::1]")
    ):
        raise reader.error("upstream", "must be https:// (plain http only on loopback)")
    prefixes = tuple(reader.strings("path_prefixes", ("/",)))
    for prefix in prefixes:
        if not prefix.startswith("/") or "/../" in f"{prefix}/" or "//" in prefix:
            raise reader.error("path_prefixes", f"must be absolute, normalised paths ({prefix!r})")
    models = reader.strings("models", ()) if reader.has("models") else None
    route = RouteSettings(
        name=name,
        tool=tool,
        upstream=upstream,
        key_header=TokenHeader(
            reader.string("key_header", TokenHeader.AUTHORIZATION, choices=tuple(TokenHeader))
        ),
        key_source=_key_source(reader.section("key", required=True)),
        methods=frozenset(reader.strings("methods", ("GET", "POST"), choices=HTTP_METHODS)),
        path_prefixes=prefixes,
        models=frozenset(models) if models is not None else None,
        prices=_prices(reader.section("prices")),
        budgets=tuple(_budget(b) for b in reader.sections("budgets")),
        ca_file=reader.optional_path("ca_file"),
    )
    reader.finish()
    if any(b.spend_micros is not None for b in route.budgets) and not route.prices:
        raise reader.error("prices", "is required when a budget limits spend")
    return route


def _key_source(reader: Reader) -> KeySourceSettings:
    kind = reader.string("source", choices=("vault", "file"))
    if kind == "file":
        source = KeySourceSettings(kind, str(reader.path("file")))
    else:
        source = KeySourceSettings(
            kind,
            reader.string("path"),
            mount=reader.string("mount", "secret"),
            field=reader.string("field", "api_key"),
        )
    source = KeySourceSettings(
        source.kind,
        source.path,
        source.mount,
        source.field,
        reader.number("cache_seconds", 60.0, minimum=0, maximum=86400),
    )
    reader.finish()
    return source


def _prices(reader: Reader) -> dict[str, Price]:
    prices: dict[str, Price] = {}
    for model in reader.names():
        item = reader.section(model)
        prices[model] = Price(
            input_micros=item.integer("input", minimum=0),
            output_micros=item.integer("output", minimum=0),
        )
        item.finish()
    return prices


def _budget(reader: Reader) -> BudgetSettings:
    budget = BudgetSettings(
        per=reader.string("per", choices=("agent", "user", "route")),
        window_seconds=reader.integer("window_seconds", minimum=1, maximum=366 * 86400),
        requests=reader.integer("requests", minimum=1) if reader.has("requests") else None,
        spend_micros=reader.integer("spend", minimum=1) if reader.has("spend") else None,
    )
    reader.finish()
    if budget.requests is None and budget.spend_micros is None:
        raise reader.error("requests", "or `spend` is required in a budget")
    return budget
