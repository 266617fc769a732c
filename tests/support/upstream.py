"""A local model-provider upstream speaking OpenAI's and Anthropic's JSON, requiring a key.

It answers only requests carrying its key (`Authorization: Bearer` or `x-api-key`), keeps
what it saw (to prove the agent's credential never reached it), and holds a streamed
response after its first event until the test releases it (to prove the gateway streams).
A path ending in `/stall` streams one event and then nothing, until the client goes away;
one ending in `/break` streams one event and then drops its connection mid-body; one
ending in `/drip` streams an event every 20 ms until the client goes away (10 s at most).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

USAGE = {"prompt_tokens": 10, "completion_tokens": 20}


@dataclass
class Upstream:
    """The running upstream: its URL, its key, and what it saw."""

    key: str
    url: str = ""
    seen: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    hold: bool = False  # streamed responses wait for `release` after the first event
    got_first: asyncio.Event = field(default_factory=asyncio.Event)  # an upload's first bytes
    dropped: asyncio.Event = field(default_factory=asyncio.Event)  # a stalled stream was closed


def _authorized(upstream: Upstream, request: web.Request) -> bool:
    bearer = request.headers.get("Authorization", "")
    return bearer == f"Bearer {upstream.key}" or request.headers.get("x-api-key") == upstream.key


async def _sse(request: web.Request, upstream: Upstream, events: list[str]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index, event in enumerate(events):
        await response.write(event.encode())
        if index == 0 and upstream.hold:
            await asyncio.wait_for(upstream.release.wait(), 10)
    await response.write_eof()
    upstream.finished.set()
    return response


async def _stall(request: web.Request, upstream: Upstream, first: str) -> web.StreamResponse:
    """Send the first event, then nothing, until the client closes the connection (10 s)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(first.encode())
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        if request.transport is None or request.transport.is_closing():
            upstream.dropped.set()
            break
        await asyncio.sleep(0.01)
    return response


async def _drip(request: web.Request, upstream: Upstream, event: str) -> web.StreamResponse:
    """Send an event every 20 ms until the client closes the connection (10 s at most)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    deadline = asyncio.get_running_loop().time() + 10
    try:
        while asyncio.get_running_loop().time() < deadline:
            if request.transport is None or request.transport.is_closing():
                break
            await response.write(event.encode())
            await asyncio.sleep(0.02)
    except ConnectionError:
        pass
    upstream.dropped.set()
    return response


async def _break(request: web.Request, first: str) -> web.StreamResponse:
    """Send the first event, then close the connection without ending the chunked body."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(first.encode())
    await asyncio.sleep(0.05)  # the event leaves on its own, before the connection drops
    assert request.transport is not None
    request.transport.close()
    return response


async def _stream(
    request: web.Request, upstream: Upstream, events: list[str]
) -> web.StreamResponse:
    if request.path.endswith("/stall"):
        return await _stall(request, upstream, events[0])
    if request.path.endswith("/break"):
        return await _break(request, events[0])
    if request.path.endswith("/drip"):
        return await _drip(request, upstream, events[0])
    return await _sse(request, upstream, events)


def _openai(model: str, stream: bool) -> list[str] | dict[str, Any]:
    if not stream:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {**USAGE, "total_tokens": 30},
        }

    def chunk(delta: dict[str, Any], finish: str | None, usage: bool = False) -> str:
        body: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage:
            body["usage"] = {**USAGE, "total_tokens": 30}
        return f"data: {json.dumps(body)}\n\n"

    return [
        chunk({"role": "assistant", "content": "Hel"}, None),
        chunk({"content": "lo"}, None),
        chunk({}, "stop", usage=True),
        "data: [DONE]\n\n",
    ]


def _anthropic(model: str, stream: bool) -> list[str] | dict[str, Any]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 20},
    }
    if not stream:
        return message

    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": 10, "output_tokens": 1}
    return [
        event("message_start", {"message": start}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        event(
            "content_block_delta",
            {"index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        ),
        event("content_block_stop", {"index": 0}),
        event(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 20},
            },
        ),
        event("message_stop", {}),
    ]


def upstream_app(upstream: Upstream) -> web.Application:
    """The upstream's application."""

    async def handle(request: web.Request) -> web.StreamResponse:
        upstream.seen.append(dict(request.headers))
        upstream.paths.append(request.path_qs)
        if not _authorized(upstream, request):
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        if request.path.endswith("/slow"):
            await asyncio.sleep(3)
        if request.path.endswith("/upload"):
            first = await request.content.readany()
            upstream.got_first.set()
            rest = await request.read()
            return web.json_response({"bytes": len(first) + len(rest)})
        if request.method == "GET":
            return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini"}]})
        body = await request.json()
        builder = _anthropic if request.path.endswith("/messages") else _openai
        answer = builder(str(body.get("model")), bool(body.get("stream")))
        if isinstance(answer, list):
            return await _stream(request, upstream, answer)
        upstream.finished.set()
        # A session cookie, as some providers set: it is the agent's, never another's.
        headers = {"X-Upstream": "yes", "Set-Cookie": "upstream_session=s1; Path=/"}
        return web.json_response(answer, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@asynccontextmanager
async def local_upstream(key: str) -> AsyncIterator[Upstream]:
    """Serve the upstream on a free loopback port (plain HTTP), in this event loop."""
    upstream = Upstream(key)
    runner = web.AppRunner(upstream_app(upstream), access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
        upstream.url = f"http://127.0.0.1:{port}"
        yield upstream
    finally:
        await runner.cleanup()
