"""Request bodies: deep JSON nesting and non-UTF-8 forms are 400s, `ttl_seconds: null` is absent."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import BadRequest, OAuthError
from broker.strictjson import too_deep
from broker.web.handlers.credentials import parse_credential_request, read_json_object
from broker.web.handlers.oauth import read_form

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    """A bare app whose handlers call the body readers and report what they raise."""

    async def json_body(request: web.Request) -> web.Response:
        try:
            return web.json_response(await read_json_object(request))
        except BadRequest as exc:
            return web.json_response({"detail": exc.detail}, status=400)

    async def form_body(request: web.Request) -> web.Response:
        try:
            return web.json_response(await read_form(request))
        except OAuthError as exc:
            return web.json_response({"error": exc.error, "detail": exc.detail}, status=400)

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/json", json_body)
    app.router.add_post("/form", form_body)
    return await aiohttp_client(app)


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("opening", ["[", '{"a":'])
async def test_deeply_nested_json_is_a_400(client: TestClient[Any, Any], opening: str) -> None:
    """60k levels of nesting (under the 64 KiB limit) is refused before parsing, never a 500."""
    depth = 60_000 // len(opening)
    resp = await client.post(
        "/json", data=opening * depth, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert "nests arrays/objects deeper than 32 levels" in (await resp.json())["detail"]


async def test_depth_limit_is_exact_and_ignores_strings(client: TestClient[Any, Any]) -> None:
    """32 levels pass, 33 do not; brackets inside strings are not nesting."""
    ok = '{"a":' + "[" * 31 + "]" * 31 + "}"
    assert (await client.post("/json", data=ok)).status == 200
    deep = '{"a":' + "[" * 32 + "]" * 32 + "}"
    assert (await client.post("/json", data=deep)).status == 400
    text = '{"reason": "' + "[{" * 100 + '\\"[[["}'
    resp = await client.post("/json", data=text)
    assert resp.status == 200
    assert (await resp.json())["reason"].startswith("[{[{")
    # An escaped backslash right before the closing quote: the string ends there.
    after_escape = '{"a":"x\\\\","b":' + "[" * 31 + "]" * 31 + "}"
    assert (await client.post("/json", data=after_escape)).status == 200
    deeper = '{"a":"x\\\\","b":' + "[" * 32 + "]" * 32 + "}"
    assert (await client.post("/json", data=deeper)).status == 400


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet='[]{}"\\\\ab\n', max_size=12)
JSON_TREES = st.recursive(
    st.none() | st.integers() | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(JSON_TREES, st.integers(0, 40), st.booleans())
def test_depth_scan_agrees_with_the_parsed_depth(value: object, wrap: int, as_object: bool) -> None:
    """The pre-parse scan (web and JOSE alike) finds exactly the nesting json.loads would build."""
    for _ in range(wrap):
        value = {'k[\\"': value} if as_object else [value, "]\\"]
    raw = json.dumps(value).encode()
    expected = _depth(value) > 32
    assert too_deep(raw) is expected


async def test_non_utf8_json_body_is_a_400(client: TestClient[Any, Any]) -> None:
    """Bytes that are not UTF-8 (UTF-16 included) are refused with a clear detail."""
    for raw in (b'{"tools": ["\xff"]}', '{"tools": []}'.encode("utf-16")):
        resp = await client.post("/json", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert "not UTF-8" in (await resp.json())["detail"]


@pytest.mark.parametrize(
    "raw",
    [b"token=\xff\xfe", b"token=%FF%FE", b"subject_token=abc&audience=%C3%28", b"%FF=x"],
    ids=["raw-bytes", "percent-encoded", "truncated-sequence", "in-a-name"],
)
async def test_non_utf8_form_is_an_oauth_400(client: TestClient[Any, Any], raw: bytes) -> None:
    """Invalid UTF-8, raw or percent-encoded, is invalid_request, never a 500 or U+FFFD."""
    resp = await client.post("/form", data=raw, headers=FORM)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid_request"
    assert "UTF-8" in body["detail"]


async def test_form_with_another_charset_is_an_oauth_400(client: TestClient[Any, Any]) -> None:
    """A form declared in a charset other than UTF-8 is refused rather than guessed at."""
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=latin-1"}
    resp = await client.post("/form", data=b"token=abc", headers=headers)
    assert resp.status == 400
    assert "UTF-8" in (await resp.json())["detail"]
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=no-such-codec"}
    assert (await client.post("/form", data=b"token=abc", headers=headers)).status == 400


async def test_valid_forms_still_parse(client: TestClient[Any, Any]) -> None:
    """UTF-8, '+' for space, empty values; a repeated parameter is still refused."""
    resp = await client.post("/form", data=b"a=1&b=%C3%A9+x&c=", headers=FORM)
    assert resp.status == 200
    assert await resp.json() == {"a": "1", "b": "é x", "c": ""}
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}
    assert (await client.post("/form", data=b"a=1", headers=headers)).status == 200
    resp = await client.post("/form", data=b"a=1&a=2", headers=FORM)
    assert resp.status == 400
    assert "repeated" in (await resp.json())["detail"]


def test_ttl_seconds_null_means_absent() -> None:
    """`"ttl_seconds": null` is the same as leaving it out (the policy's default applies)."""
    parsed = parse_credential_request({"tools": ["t"], "ttl_seconds": None}, frozenset({"t"}))
    assert parsed.ttl_seconds is None
    assert parsed == parse_credential_request({"tools": ["t"]}, frozenset({"t"}))
