"""Per-request policy of a route: which route, method, path prefix and model.

Paths are checked in their normalised, decoded form; a raw path with an encoded slash or
dot segment (`%2f`, `%2e`) is refused rather than guessed at, so that the prefix checked
is the path the upstream sees.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from broker.gateway.config import RouteSettings

__all__ = ["Refusal", "check_model", "check_request", "find_route", "model_of"]

_AMBIGUOUS = re.compile(r"%2[fFeE]|%5[cC]")


class Refusal(Exception):
    """A policy refusal: 403 with its reason."""

    def __init__(self, reason: str, detail: str) -> None:
        """Create it."""
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def find_route(
    routes: Mapping[str, RouteSettings], raw_path: str
) -> tuple[RouteSettings | None, str]:
    """The route named by the first segment of `raw_path`, and the raw rest (`/...`)."""
    name, _, rest = raw_path.removeprefix("/").partition("/")
    return routes.get(name), "/" + rest


def check_request(route: RouteSettings, method: str, path: str, raw_rest: str) -> None:
    """Refuse a method or path the route does not allow.

    Args:
        route: The route.
        method: The request's method.
        path: The decoded, normalised path below the route.
        raw_rest: The raw path below the route, as it will be forwarded.

    Raises:
        Refusal: `method_not_allowed` or `path_not_allowed`.
    """
    if method not in route.methods:
        raise Refusal("method_not_allowed", f"{method} is not allowed on this route")
    segments = path.split("/")
    if _AMBIGUOUS.search(raw_rest) or ".." in segments or "." in segments:
        raise Refusal("path_not_allowed", "the path is not allowed on this route")
    for prefix in route.path_prefixes:
        stem = prefix.rstrip("/")
        if not stem or path == stem or path.startswith(stem + "/"):
            return
    raise Refusal("path_not_allowed", "the path is not allowed on this route")


def model_of(body: bytes) -> str | None:
    """The JSON body's top-level `model`, if it is a string."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None


def check_model(route: RouteSettings, model: str | None) -> None:
    """Refuse a model outside the route's allow-list (or none, when there is a list).

    Raises:
        Refusal: `model_not_allowed`.
    """
    if route.models is not None and (model is None or model not in route.models):
        raise Refusal("model_not_allowed", "the model is not allowed on this route")
