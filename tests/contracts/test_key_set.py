"""The key set contract, run against every implementation: a JWKS file and a JWKS URL.

The URL key set fetches from a real HTTPS server (aiohttp, a certificate from a run-time
CA) started here.
Promises: after `start()`, `keys(kid)` returns the source's keys by kid (an unknown kid
is simply absent, never an error); a key added at the source is found by its kid once
the refresh limits allow (file: re-read at most once a second; URL: an unknown kid
refetches at most once per 30 s), on the injected clock.
Failure: the source gone after a load (file deleted; server stopped) keeps the last good
keys; a source that never delivered (no file; nothing listening at the URL) makes
`keys()` raise `Unavailable`.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from broker.context.jwks import FileKeySet, UrlKeySet
from broker.dev.pki import new_ec_key
from broker.errors import Unavailable
from broker.jose import public_jwk
from broker.typing import KeySet
from tests.support.broker import free_port
from tests.support.clock import ManualClock
from tests.support.pki import TrustDomain


def new_jwk() -> dict[str, str]:
    return public_jwk(new_ec_key(), alg="ES256")


class JwksServer:
    """An HTTPS server publishing a JWKS document the test can change or take down."""

    def __init__(self, directory: Path) -> None:
        self.td = TrustDomain("idp.example.org")
        leaf = self.td.svid("/jwks", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        cert, key = leaf.write(directory / "tls")
        self.ca_file = directory / "tls" / "ca.pem"
        self.ca_file.write_bytes(self.td.bundle_pem())
        self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ssl.load_cert_chain(cert, key)
        self.keys: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _jwks(self, _request: web.Request) -> web.Response:
        return web.json_response({"keys": self.keys})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks", self._jwks)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl)
        await site.start()
        port = next(a[1] for a in self.runner.addresses if isinstance(a, tuple))
        self.url = f"https://127.0.0.1:{port}/jwks"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@dataclass
class Harness:
    key_set: KeySet
    published: list[dict[str, str]]  # what the source holds at first
    publish: Callable[[list[dict[str, str]]], Awaitable[None]]  # the source now holds these
    take_down: Callable[[], Awaitable[None]]  # the source is gone


@pytest.fixture(params=["file", "url"])
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Harness]:
    """Each implementation over a source holding one key, started."""
    first = [new_jwk()]
    if request.param == "file":
        path = tmp_path / "idp.jwks"

        async def write(keys: list[dict[str, str]]) -> None:
            path.write_text(json.dumps({"keys": keys}))

        async def delete() -> None:
            path.unlink()

        await write(first)
        file_set = FileKeySet(path, clock)
        await file_set.start()
        yield Harness(file_set, first, write, delete)
        await file_set.close()
        return
    server = JwksServer(tmp_path)
    server.keys = first
    await server.start()

    async def serve(keys: list[dict[str, str]]) -> None:
        server.keys = keys

    url_set = UrlKeySet(server.url, clock, refresh_seconds=300, ca_file=server.ca_file)
    await url_set.start()
    yield Harness(url_set, first, serve, server.stop)
    await url_set.close()
    await server.stop()


async def test_keys_by_kid(harness: Harness) -> None:
    """keys() returns the source's keys by kid; an unknown kid is just absent."""
    known = await harness.key_set.keys(None)
    assert len(known) == 1
    kid = next(iter(known))
    assert kid in await harness.key_set.keys(kid)
    assert "no-such-kid" not in await harness.key_set.keys("no-such-kid")


async def test_a_new_key_is_found_by_kid_after_the_refresh_limit(
    harness: Harness, clock: ManualClock
) -> None:
    """A key added at the source is returned for its kid once the refresh limit has passed."""
    added = new_jwk()
    await harness.publish([*harness.published, added])
    assert added["kid"] not in await harness.key_set.keys(added["kid"])  # within the limit
    clock.advance(31)
    keys = await harness.key_set.keys(added["kid"])
    assert added["kid"] in keys
    assert {k["kid"] for k in harness.published} <= set(keys)


async def test_a_source_gone_after_a_load_keeps_the_last_good_keys(
    harness: Harness, clock: ManualClock
) -> None:
    """File deleted or server stopped: the keys loaded before are still returned."""
    before = dict(await harness.key_set.keys(None))
    await harness.take_down()
    clock.advance(3600)  # past every refresh interval and throttle
    assert dict(await harness.key_set.keys("unknown-kid")) == before


@pytest.mark.parametrize("kind", ["file", "url"])
async def test_a_source_that_never_delivered_is_unavailable(
    kind: str, tmp_path: Path, clock: ManualClock
) -> None:
    """No file, or nothing listening at the URL: keys() raises Unavailable."""
    key_set: KeySet
    if kind == "file":
        key_set = FileKeySet(tmp_path / "absent.jwks", clock)
    else:
        server = JwksServer(tmp_path)  # for its CA: the TLS setup is right, the port is closed
        url = f"https://127.0.0.1:{free_port()}/jwks"
        key_set = UrlKeySet(url, clock, refresh_seconds=300, ca_file=server.ca_file)
    await key_set.start()
    with pytest.raises(Unavailable):
        await key_set.keys(None)
    clock.advance(31)  # a retry is allowed by now, and fails as well
    with pytest.raises(Unavailable):
        await key_set.keys("any")
    await key_set.close()
