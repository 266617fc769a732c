"""Typed keys for application and request state."""

from __future__ import annotations

import asyncio

from aiohttp import web

from broker.domain import Caller
from broker.runtime import Runtime

__all__ = ["CALLER", "DRAINING", "REQUEST_ID", "RUNTIME"]

RUNTIME = web.AppKey("runtime", Runtime)
# Set once a termination signal arrived: /readyz answers 503 from then on.
DRAINING = web.AppKey("draining", asyncio.Event)
CALLER = web.RequestKey("caller", Caller)
REQUEST_ID = web.RequestKey("request_id", str)
