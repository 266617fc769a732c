"""Typed keys for application and request state.

Handlers read only the service they need (`PIPELINE`, `REVOCATION`, ...), never the whole
runtime; `RUNTIME` is for the server's own wiring (TLS context, signals) and for tests.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from broker.domain import Caller
from broker.governance.directory import AgentDirectory
from broker.lifecycle import Introspection, Revocation
from broker.pipeline import Pipeline
from broker.runtime import Runtime, ToolCatalogue
from broker.tracing import Tracer
from broker.web.discovery import Discovery
from broker.web.probes import Probes

__all__ = [
    "AGENTS",
    "CALLER",
    "CATALOGUE",
    "DISCOVERY",
    "DRAINING",
    "INTROSPECTION",
    "PIPELINE",
    "PROBES",
    "REQUEST_ID",
    "REVOCATION",
    "RUNTIME",
    "TRACER",
    "XFCC_HEADER",
]

RUNTIME = web.AppKey("runtime", Runtime)
PIPELINE = web.AppKey("pipeline", Pipeline)
INTROSPECTION = web.AppKey("introspection", Introspection)
REVOCATION = web.AppKey("revocation", Revocation)
AGENTS = web.AppKey("agents", AgentDirectory)
CATALOGUE = web.AppKey("catalogue", ToolCatalogue)
DISCOVERY = web.AppKey("discovery", Discovery)
PROBES = web.AppKey("probes", Probes)
XFCC_HEADER = web.AppKey("xfcc_header", str)
TRACER = web.AppKey("tracer", Tracer)
# Set once a termination signal arrived: /readyz answers 503 from then on.
DRAINING = web.AppKey("draining", asyncio.Event)
CALLER = web.RequestKey("caller", Caller)
REQUEST_ID = web.RequestKey("request_id", str)
