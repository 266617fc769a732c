"""`broker dev ...`: the embedded development trust domain (contract sections 1 and 2)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from broker import eventloop
from broker.clock import SystemClock
from broker.config.settings import Settings, load_settings
from broker.dev.trust_domain import (
    DEMO_AGENTS,
    DevTrustDomain,
    init_trust_domain,
    mint_jwt_svid,
    mint_user_token,
    open_trust_domain,
)
from broker.dev.upstream import DEMO_MODEL, demo_key_file, start_demo_upstream
from broker.errors import ConfigError
from broker.gateway.config import GatewaySettings, KeySourceSettings, RouteSettings, TokenHeader
from broker.logging import configure_logging

__all__ = ["add_commands", "demo_command", "gateway_command"]

DEFAULT_DIR = Path(".broker-dev")
DEMO_TOKEN_TTL = 12 * 3600
MAX_TTL = 24 * 3600


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Register `broker dev` and its subcommands."""
    dev = commands.add_parser(
        "dev",
        help="serve a generated development trust domain on 127.0.0.1 with mTLS",
        description="Create (if absent) a development trust domain in DIR and serve it.",
    )
    dev.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="default: .broker-dev")
    dev.add_argument("--port", type=_port, default=8443, help="default: 8443")
    dev.add_argument("--trust-domain", default=None, help="default: example.org")
    dev.add_argument(
        "--gateway-port", type=_port, default=None, help="the gateway's port, default: --port + 1"
    )
    dev.set_defaults(run=_dev)
    sub = dev.add_subparsers(dest="dev_command", parser_class=type(dev))

    init = sub.add_parser("init", help="only create the development trust domain")
    init.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    init.add_argument("--trust-domain", default=None)
    init.set_defaults(run=_init)

    token = sub.add_parser("user-token", help="print a user token from the development IdP")
    token.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="default: .broker-dev")
    token.add_argument("--user", required=True)
    token.add_argument("--tier", default="standard")
    token.add_argument("--ttl", type=_ttl, default=3600, help="seconds, default 3600")
    token.add_argument("--group", action="append", default=[], help="repeatable")
    token.set_defaults(run=_user_token)

    svid = sub.add_parser("jwt-svid", help="print a JWT-SVID for a demo agent")
    svid.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="default: .broker-dev")
    svid.add_argument("--agent", required=True, choices=DEMO_AGENTS)
    svid.add_argument("--audience", default=None, help="default: the broker's SPIFFE ID")
    svid.add_argument("--ttl", type=_ttl, default=300)
    svid.set_defaults(run=_jwt_svid)


def _port(value: str) -> int:
    port = int(value) if value.isdigit() else -1
    if not 0 <= port <= 65535:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"invalid port {value!r}")
    return port


def _ttl(value: str) -> int:
    ttl = int(value) if value.isdigit() else 0
    if not 1 <= ttl <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_TTL}")
    return ttl


def _init(args: argparse.Namespace) -> int:
    td, created = init_trust_domain(args.dir, args.trust_domain, SystemClock())
    verb = "created" if created else "exists"
    print(f"development trust domain {td.trust_domain} {verb} in {td.root}")  # noqa: T201
    return 0


def demo_command(td: DevTrustDomain, url: str, user_token: str) -> str:
    """One copy-pasteable command: the `claims` agent gets a credential for a user."""
    agent = _relative(td.agent_dir("claims"))
    body = json.dumps({"tools": ["customer_data_api"], "user_token": user_token})
    return (
        f"curl --cacert {shlex.quote(str(_relative(td.root) / 'ca/bundle.pem'))} "
        f"--cert {shlex.quote(str(agent / 'svid.pem'))} "
        f"--key {shlex.quote(str(agent / 'key.pem'))} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)} "
        f"{url}/v1/credentials"
    )


def _relative(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path.resolve()


def gateway_command(td: DevTrustDomain, broker_url: str, gateway_url: str) -> str:
    """One copy-pasteable command: `analytics` gets a credential and calls the demo upstream.

    The first curl fetches a fresh broker credential (mTLS); the second calls the demo
    upstream through the gateway with it. The upstream's key never leaves the broker.
    """
    agent = _relative(td.agent_dir("analytics"))
    tls = (
        f"--cacert {shlex.quote(str(_relative(td.root) / 'ca/bundle.pem'))} "
        f"--cert {shlex.quote(str(agent / 'svid.pem'))} "
        f"--key {shlex.quote(str(agent / 'key.pem'))}"
    )
    fetch = (
        f"curl -s {tls} -H 'Content-Type: application/json' "
        f'-d \'{{"tools": ["analytics_api"]}}\' {broker_url}/v1/credentials'
    )
    extract = (
        'python3 -c \'import json,sys;print(json.load(sys.stdin)["credentials"][0]["token"])\''
    )
    chat = json.dumps({"model": DEMO_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    return (
        f"TOKEN=$({fetch} | {extract}) && "
        f'curl -s {tls} -H "Authorization: Bearer $TOKEN" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(chat)} "
        f"{gateway_url}/demo/v1/chat/completions"
    )


def _dev(args: argparse.Namespace) -> int:
    clock = SystemClock()
    td, _created = init_trust_domain(args.dir, args.trust_domain, clock)
    settings = load_settings(td.config)
    settings = dataclasses.replace(
        settings, listen=dataclasses.replace(settings.listen, port=args.port)
    )
    configure_logging(settings.log_level)
    key_file = demo_key_file(td.root)
    loop = eventloop.loop_name()
    eventloop.run(_serve_dev(td, settings, args, key_file, key_file.read_text().strip()), loop)
    return 0


async def _serve_dev(
    td: DevTrustDomain, settings: Settings, args: argparse.Namespace, key_file: Path, key: str
) -> None:
    from broker.web.server import serve  # noqa: PLC0415 - keeps `broker --help` fast

    clock = SystemClock()
    upstream, upstream_url = await start_demo_upstream(key)
    gateway_port = args.gateway_port
    if gateway_port is None:
        gateway_port = args.port + 1 if args.port else 0
    settings = dataclasses.replace(
        settings, gateway=demo_gateway(settings, upstream_url, key_file, gateway_port)
    )
    gateway_urls: list[str] = []

    def announce(url: str) -> None:
        token = mint_user_token(
            td, user="alice", tier="standard", ttl=DEMO_TOKEN_TTL, groups=(), clock=clock
        )
        print(  # noqa: T201
            f"\nbroker dev: trust domain {td.trust_domain} in {td.root}\n"
            f"serving {url} (mTLS, SPIFFE ID {td.broker_id})\n\n"
            "Get a five-minute credential as the demo agent 'claims', on behalf of user "
            f"'alice' (her token, minted now, is valid {DEMO_TOKEN_TTL // 3600} h):\n\n"
            f"  {demo_command(td, url, token)}\n",
            flush=True,
        )
        for gateway_url in gateway_urls:
            print(  # noqa: T201
                f"gateway {gateway_url}: route 'demo' -> the demo upstream at {upstream_url}, "
                "whose key only the broker holds. Call it as the agent 'analytics' with a "
                "fresh credential:\n\n"
                f"  {gateway_command(td, url, gateway_url)}\n",
                flush=True,
            )

    try:
        await serve(settings, on_listening=announce, clock=clock, on_gateway=gateway_urls.append)
    finally:
        await upstream.cleanup()


def demo_gateway(
    settings: Settings, upstream_url: str, key_file: Path, port: int
) -> GatewaySettings:
    """The dev gateway: one route, `demo`, to the demo upstream, for `analytics_api`."""
    del settings
    route = RouteSettings(
        name="demo",
        tool="analytics_api",
        upstream=upstream_url,
        key_header=TokenHeader.AUTHORIZATION,
        key_source=KeySourceSettings("file", str(key_file)),
        methods=frozenset({"GET", "POST"}),
        path_prefixes=("/v1/",),
        models=frozenset({DEMO_MODEL}),
    )
    return GatewaySettings(host="127.0.0.1", port=port, routes={"demo": route})


def _user_token(args: argparse.Namespace) -> int:
    td = open_trust_domain(args.dir)
    if not args.user.strip():
        raise ConfigError("--user must not be empty")
    token = mint_user_token(
        td,
        user=args.user,
        tier=args.tier,
        ttl=args.ttl,
        groups=tuple(args.group),
        clock=SystemClock(),
    )
    sys.stdout.write(token + "\n")
    return 0


def _jwt_svid(args: argparse.Namespace) -> int:
    td = open_trust_domain(args.dir)
    token = mint_jwt_svid(
        td,
        agent=args.agent,
        audience=args.audience or td.broker_id,
        ttl=args.ttl,
        clock=SystemClock(),
    )
    sys.stdout.write(token + "\n")
    return 0
