"""Typed keys for application and request state."""

from __future__ import annotations

from aiohttp import web

from broker.domain import Caller
from broker.runtime import Runtime

__all__ = ["CALLER", "REQUEST_ID", "RUNTIME"]

RUNTIME = web.AppKey("runtime", Runtime)
CALLER = web.RequestKey("caller", Caller)
REQUEST_ID = web.RequestKey("request_id", str)
