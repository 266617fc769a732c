"""The identity source contract, run against every implementation: files and the Workload API.

The Workload API source talks to a real gRPC Workload API server on a Unix socket
(tests/support/workload_api.py) through py-spiffe's client.

Promises: `start()` loads a snapshot whose SVID carries the broker's SPIFFE ID, with our
trust domain's bundle, and `ready()` is true; a listener given to `subscribe()` sees a
rotation; `fetch_jwt_svid(aud)` returns a JWT-SVID of the broker for `aud`, or raises
`IdentityError` (an `Unavailable`) when the source cannot mint one: files never can.
Failure: an unusable update (a garbage SVID file; an SVID for another SPIFFE ID from the
Workload API) keeps the last good snapshot, and `ready()` stays true while it is
unexpired; the backend gone (the files removed; the Workload API server stopped) keeps
that snapshot too, and `fetch_jwt_svid` raises `Unavailable`; `start()` with no
material at all (no files, no server) raises `IdentityError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from broker.config.settings import Settings
from broker.errors import Unavailable
from broker.identity.files import FilesIdentitySource
from broker.identity.material import IdentityError, IdentitySnapshot
from broker.identity.workload_api import WorkloadApiIdentitySource
from broker.typing import IdentitySource
from tests.support.broker import Identity, eventually
from tests.support.clock import ManualClock
from tests.support.pki import Svid
from tests.support.workload_api import WorkloadApiServer

API_TIMEOUT = 1.0


@dataclass
class Harness:
    source: IdentitySource
    identity: Identity
    publish: Callable[[Svid], None]  # the backend hands out this SVID for the broker
    publish_unusable: Callable[[], None]  # the backend hands out material that cannot be used
    stop_backend: Callable[[], None]  # the backend goes away
    mints_jwt_svids: bool


def new_broker_svid(identity: Identity) -> Svid:
    return identity.td.svid("/broker", dns_names=["localhost"], ip_addresses=["127.0.0.1"])


def files_harness(identity: Identity, clock: ManualClock) -> Harness:
    svid_file = identity.directory / "broker" / "svid.pem"

    def publish(svid: Svid) -> None:
        svid.write(identity.directory / "broker")

    def garbage() -> None:
        svid_file.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")

    def remove() -> None:  # spiffe-helper gone, its files with it
        for path in (identity.directory / "broker").iterdir():
            path.unlink()

    settings = identity.settings()  # files under identity.directory, polled every 0.2 s
    return Harness(
        FilesIdentitySource(settings, clock),
        identity,
        publish,
        garbage,
        remove,
        mints_jwt_svids=False,
    )


def workload_api_settings(identity: Identity, socket: str) -> Settings:
    return identity.settings(
        identity={
            "source": "workload_api",
            "files": None,
            "workload_api": {"socket": socket, "timeout_seconds": API_TIMEOUT},
        }
    )


def workload_api_harness(
    identity: Identity, clock: ManualClock, server: WorkloadApiServer
) -> Harness:
    def publish(svid: Svid) -> None:
        server.set_x509([svid], identity.td)
        server.set_jwt_bundles({identity.td.name: identity.td}, issuer=identity.td)

    def foreign_id() -> None:
        server.set_x509([identity.td.svid("/not-the-broker")], identity.td)

    return Harness(
        WorkloadApiIdentitySource(workload_api_settings(identity, server.socket), clock),
        identity,
        publish,
        foreign_id,
        server.stop,
        mints_jwt_svids=True,
    )


@pytest.fixture(params=["files", "workload_api"])
async def harness(
    request: pytest.FixtureRequest, identity: Identity, clock: ManualClock
) -> AsyncIterator[Harness]:
    """Each implementation, its backend serving the broker's SVID, started."""
    if request.param == "files":
        built = files_harness(identity, clock)
    else:
        built = workload_api_harness(identity, clock, request.getfixturevalue("workload_api"))
        built.publish(identity.broker)
    await built.source.start()
    yield built
    await built.source.close()


async def test_start_loads_the_brokers_svid_and_bundle(harness: Harness) -> None:
    """After start(), the snapshot is the broker's SVID with our trust domain's bundle."""
    snapshot = harness.source.snapshot()
    assert snapshot.svid.spiffe_id == harness.identity.broker_id
    assert snapshot.svid.leaf.serial_number == harness.identity.broker.cert.serial_number
    bundle = snapshot.bundle(harness.identity.td.name)
    assert bundle is not None
    assert bundle.x509_authorities
    assert harness.source.ready()


async def test_a_rotation_reaches_listeners(harness: Harness) -> None:
    """subscribe(): the listener gets the rotated SVID, and snapshot() returns it."""
    seen: list[IdentitySnapshot] = []
    harness.source.subscribe(seen.append)
    rotated = new_broker_svid(harness.identity)
    harness.publish(rotated)
    await eventually(lambda: seen, within=5)
    assert seen[-1].svid.leaf.serial_number == rotated.cert.serial_number
    assert harness.source.snapshot() is seen[-1]


async def test_fetch_jwt_svid_mints_for_the_audience_or_refuses(harness: Harness) -> None:
    """fetch_jwt_svid: the broker's JWT-SVID for that audience; files raise IdentityError."""
    if not harness.mints_jwt_svids:
        with pytest.raises(IdentityError):
            await harness.source.fetch_jwt_svid("vault")
        return
    token = await harness.source.fetch_jwt_svid("vault")
    claims = jwt.decode(
        token,
        harness.identity.td.jwt_key.public_key(),
        algorithms=["ES256"],
        audience="vault",
    )
    assert claims["sub"] == harness.identity.broker_id


async def test_an_unusable_update_keeps_the_last_good_snapshot(harness: Harness) -> None:
    """Garbage SVID file, or an SVID for another ID: the last good one stays; rotation goes on."""
    before = harness.source.snapshot()
    harness.publish_unusable()
    await asyncio.sleep(0.6)  # three polls of the files; the Workload API pushes at once
    assert harness.source.snapshot().fingerprint == before.fingerprint
    assert harness.source.ready()
    rotated = new_broker_svid(harness.identity)  # and the source still follows its backend
    harness.publish(rotated)
    await eventually(
        lambda: harness.source.snapshot().svid.leaf.serial_number == rotated.cert.serial_number,
        within=5,
    )


async def test_backend_gone_keeps_serving_but_cannot_mint(harness: Harness) -> None:
    """Files removed, server stopped: the last good snapshot stays; fetch_jwt_svid Unavailable."""
    before = harness.source.snapshot()
    harness.stop_backend()
    await asyncio.sleep(0.5)  # a few polls of the files; the Workload API streams break
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await harness.source.fetch_jwt_svid("vault")
    assert time.monotonic() - started < API_TIMEOUT + 1
    assert harness.source.snapshot().fingerprint == before.fingerprint
    assert harness.source.ready()


@pytest.mark.parametrize("kind", ["files", "workload_api"])
async def test_start_without_material_raises_identity_error(
    kind: str, identity: Identity, clock: ManualClock, tmp_path: Path
) -> None:
    """No SVID files, or no Workload API server: start() raises IdentityError in time."""
    source: IdentitySource
    if kind == "files":
        for path in (identity.directory / "broker").iterdir():
            path.unlink()
        source = FilesIdentitySource(identity.settings(), clock)
    else:
        nobody = f"unix:///tmp/wl-absent-{tmp_path.name}.sock"  # no server ever listened here
        source = WorkloadApiIdentitySource(workload_api_settings(identity, nobody), clock)
    started = time.monotonic()
    with pytest.raises(IdentityError):
        await source.start()
    assert time.monotonic() - started < API_TIMEOUT + 2
    assert not source.ready()
    await source.close()
