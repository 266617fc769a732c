"""`broker dev`'s demo upstream: a tiny model API that requires a key the agent never sees.

It runs as a task of the dev broker's event loop on 127.0.0.1 (plain HTTP, loopback
only) and answers OpenAI-style `POST /v1/chat/completions` (with `usage`) and
`GET /v1/models`, but only with its key in `Authorization: Bearer`. The key is generated
once into the trust domain's `gateway/upstream.key` (mode 0600), which the gateway's demo
route reads; agents only ever hold their broker credential.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["DEMO_MODEL", "demo_key_file", "start_demo_upstream"]

DEMO_MODEL = "demo-model"


def demo_key_file(root: Path) -> Path:
    """The demo upstream's key file under the trust domain, created (0600) when absent."""
    path = root / "gateway" / "upstream.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    return path


async def start_demo_upstream(key: str) -> tuple[web.AppRunner, str]:
    """Serve the demo upstream on a free loopback port, requiring `key`.

    Returns:
        The runner (clean it up to stop) and the upstream's base URL.
    """
    from aiohttp import web  # noqa: PLC0415 - `broker dev user-token` and the like need no server

    expected = f"Bearer {key}"

    async def chat(request: web.Request) -> web.Response:
        if not secrets.compare_digest(request.headers.get("Authorization", ""), expected):
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        body = await request.json()
        return web.json_response(
            {
                "id": "chatcmpl-demo",
                "object": "chat.completion",
                "model": body.get("model", DEMO_MODEL),
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "Hello from the demo upstream: your broker credential "
                            "was swapped for a key you never saw.",
                        },
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24},
            }
        )

    async def models(request: web.Request) -> web.Response:
        if not secrets.compare_digest(request.headers.get("Authorization", ""), expected):
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": DEMO_MODEL}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    return runner, f"http://127.0.0.1:{port}"
