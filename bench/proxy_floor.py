"""The gateway's floor: a reverse proxy on aiohttp that does nothing but forward.

`python -m bench.proxy_floor --port P --dir D --upstream URL` listens with the broker's TLS
settings (as `bench.bare` does) and forwards every POST under `/bench/` to `URL` over TLS
(the dev trust domain's CA, aiohttp's client with a keep-alive pool), with the caller's
`Authorization` replaced by a fixed key, and streams the answer back chunk by chunk. It
checks no credential, keeps no budget and writes no audit record: it is the cost of the
two TLS legs and of aiohttp's server and client alone, the least any gateway built on
this stack can cost per request. The gateway row runs it beside the gateway, in the same
run. Nothing of it is shared with the `broker` package.
"""

from __future__ import annotations

import ssl

import aiohttp
from aiohttp import web

from bench.bare import serve, server_parser

__all__ = ["main"]

PREFIX = "/bench"
KEY = "bench-upstream-key"
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "authorization"}
)


async def _forward(request: web.Request) -> web.StreamResponse:
    session: aiohttp.ClientSession = request.app["session"]
    upstream: str = request.app["upstream"]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    headers["Authorization"] = f"Bearer {KEY}"
    body = await request.read()
    async with session.post(
        upstream + request.path[len(PREFIX) :], data=body, headers=headers
    ) as upstream_response:
        response = web.StreamResponse(status=upstream_response.status)
        content_type = upstream_response.headers.get("Content-Type")
        if content_type:
            response.headers["Content-Type"] = content_type
        await response.prepare(request)
        async for chunk in upstream_response.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def main() -> None:
    parser = server_parser("bench.proxy_floor")
    parser.add_argument("--upstream", required=True, help="https://host:port of the upstream")
    args = parser.parse_args()

    async def start(app: web.Application) -> None:
        client_tls = ssl.create_default_context(cafile=str(args.dir / "ca" / "bundle.pem"))
        connector = aiohttp.TCPConnector(ssl=client_tls, limit=100, keepalive_timeout=30)
        app["session"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        app["upstream"] = args.upstream.rstrip("/")

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post(PREFIX + "/{tail:.*}", _forward)
    serve(app, args)


if __name__ == "__main__":
    main()
