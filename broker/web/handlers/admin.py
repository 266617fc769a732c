"""`GET /v1/admin/agents`: the agents the policy knows, with live credentials (admins)."""

from __future__ import annotations

from aiohttp import web

from broker.web.keys import AGENTS
from broker.web.middleware import caller_of
from broker.web.problem import json_response

__all__ = ["list_agents"]


async def list_agents(request: web.Request) -> web.Response:
    """Every registry entry and rule-named agent; 403 unless the caller is an admin."""
    agents = await request.app[AGENTS].list(caller_of(request))
    return json_response({"agents": [a.to_json() for a in agents]})
