"""Route policy: route lookup, methods, path prefixes (no smuggling) and the model allow-list."""

from __future__ import annotations

import pytest

from broker.gateway.config import KeySourceSettings, RouteSettings, TokenHeader
from broker.gateway.routes import Refusal, check_model, check_request, find_route, model_of

ROUTE = RouteSettings(
    name="llm",
    tool="analytics_api",
    upstream="https://up.example",
    key_header=TokenHeader.AUTHORIZATION,
    key_source=KeySourceSettings("file", "k"),
    methods=frozenset({"POST"}),
    path_prefixes=("/v1/chat/", "/v1/models"),
    models=frozenset({"gpt-4o-mini"}),
)


def test_find_route_by_first_segment() -> None:
    """The first segment names the route; the rest is forwarded as is."""
    assert find_route({"llm": ROUTE}, "/llm/v1/chat/completions") == (ROUTE, "/v1/chat/completions")
    assert find_route({"llm": ROUTE}, "/other/v1")[0] is None


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/models", "/v1/models/gpt-4o-mini", "/v1/chat/"]
)
def test_allowed_paths(path: str) -> None:
    """Paths below a prefix (segment-wise) pass."""
    check_request(ROUTE, "POST", path, path)


@pytest.mark.parametrize(
    ("method", "path", "raw", "reason"),
    [
        ("GET", "/v1/chat/completions", "/v1/chat/completions", "method_not_allowed"),
        ("POST", "/v1/embeddings", "/v1/embeddings", "path_not_allowed"),
        ("POST", "/v1/modelsX", "/v1/modelsX", "path_not_allowed"),
        ("POST", "/v1/chat/../embeddings", "/v1/chat/../embeddings", "path_not_allowed"),
        ("POST", "/v1/chat/x/embeddings", "/v1/chat/x%2F..%2Fembeddings", "path_not_allowed"),
        ("POST", "/v1/chat/x", "/v1/chat/%2e%2e/x", "path_not_allowed"),
    ],
)
def test_refused_requests(method: str, path: str, raw: str, reason: str) -> None:
    """Wrong methods, paths outside the prefixes and encoded dot segments are refused."""
    with pytest.raises(Refusal) as caught:
        check_request(ROUTE, method, path, raw)
    assert caught.value.reason == reason


def test_model_allow_list() -> None:
    """Only listed models pass; a body without a model is refused when there is a list."""
    check_model(ROUTE, model_of(b'{"model": "gpt-4o-mini"}'))
    for body in (b'{"model": "gpt-5"}', b"{}", b"not json", b'["model"]'):
        with pytest.raises(Refusal):
            check_model(ROUTE, model_of(body))
