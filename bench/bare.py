"""The ceiling: a bare aiohttp HTTPS endpoint with the broker's TLS setup and response size.

`python -m bench.bare --port P --dir D` serves, in its own process, `201` with a fixed
JSON body shaped and sized like one issued credential (~900 bytes) for any POST, and
`200` for `GET /readyz`. TLS is set up as the broker's listener is: the broker's SVID
from the development trust domain as server certificate, TLS >= 1.2, no session tickets,
client certificate requested but optional. It reads the request body, and nothing else:
whatever the broker serves below this figure is the broker's own work.
"""

from __future__ import annotations

import argparse
import json
import ssl
from pathlib import Path

from aiohttp import web

__all__ = ["BODY", "main", "serve", "server_parser", "tls_context"]

_TOKEN = "eyJhbGciOiJFZERTQSIsImtpZCI6IngiLCJ0eXAiOiJhdCtqd3QifQ." + "x" * 560 + "." + "s" * 86
BODY = json.dumps(
    {
        "decision_id": "NZeM3H7ox8QBlFvim6beEw",
        "expires_in": 300,
        "credentials": [
            {
                "tool": "analytics_api",
                "type": "jwt",
                "token": _TOKEN,
                "credential_id": "fH_y93UUEl7_LSWhvfTy0QUH",
                "expires_at": "2026-11-22T00:11:08Z",
            }
        ],
    },
    separators=(",", ":"),
).encode()


def tls_context(directory: Path) -> ssl.SSLContext:
    """The broker listener's TLS settings, with the broker's SVID."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    ctx.load_cert_chain(directory / "broker" / "svid.pem", directory / "broker" / "key.pem")
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(directory / "ca" / "bundle.pem")
    return ctx


async def _post(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=201, body=BODY, content_type="application/json")


async def _ready(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def server_parser(prog: str) -> argparse.ArgumentParser:
    """The arguments every bench server takes: its port and the dev trust domain."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="the dev trust domain")
    return parser


def serve(app: web.Application, args: argparse.Namespace) -> None:
    """Serve `app` and `GET /readyz` on 127.0.0.1 with the broker's TLS, until stopped."""
    app.router.add_get("/readyz", _ready)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        ssl_context=tls_context(args.dir),
        access_log=None,
        print=None,
        backlog=1024,
    )


def main() -> None:
    args = server_parser("bench.bare").parse_args()
    app = web.Application()
    app.router.add_post("/{tail:.*}", _post)
    serve(app, args)


if __name__ == "__main__":
    main()
