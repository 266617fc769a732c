"""Reported usage, read as the response passes: JSON bodies and server-sent events."""

from __future__ import annotations

import json

from broker.gateway.budgets import Usage, cost_of
from broker.gateway.config import KeySourceSettings, Price, RouteSettings, TokenHeader
from broker.gateway.proxy import _UsageMeter


def test_openai_json_usage() -> None:
    """`usage.prompt_tokens` / `completion_tokens` of a JSON body, split across chunks."""
    body = json.dumps({"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    meter = _UsageMeter("application/json")
    meter.feed(body[:10].encode())
    meter.feed(body[10:].encode())
    assert meter.usage() == Usage(3, 5)
    assert meter.model == "m"


def test_anthropic_sse_usage_across_events() -> None:
    """Input tokens from `message_start`, output tokens from the last `message_delta`."""
    events = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"c",'
        b'"usage":{"input_tokens":7,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":9}}\n\n'
    )
    meter = _UsageMeter("text/event-stream")
    for index in range(0, len(events), 7):  # lines split across chunks
        meter.feed(events[index : index + 7])
    assert meter.usage() == Usage(7, 9)
    assert meter.model == "c"


def test_no_usage_reported() -> None:
    """No usage: none (and no cost)."""
    meter = _UsageMeter("text/event-stream")
    meter.feed(b"data: [DONE]\n\n")
    assert meter.usage() is None


def test_cost_in_micro_units() -> None:
    """Cost = input x input price + output x output price, for a priced model only."""
    route = RouteSettings(
        "r",
        "t",
        "https://u",
        TokenHeader.AUTHORIZATION,
        KeySourceSettings("file", "k"),
        frozenset({"POST"}),
        ("/",),
        prices={"m": Price(10, 40)},
    )
    assert cost_of(route, "m", Usage(10, 20)) == 900
    assert cost_of(route, "other", Usage(10, 20)) is None
    assert cost_of(route, "m", None) is None
