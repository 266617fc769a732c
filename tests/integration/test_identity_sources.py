"""Both identity sources for real, and rotation of SVID and bundle without a restart."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import grpc
import pytest
from spiffe._proto import workload_pb2, workload_pb2_grpc

from broker.clock import SystemClock
from broker.config.settings import load_settings
from broker.identity import IdentityError
from broker.identity.files import FilesIdentitySource
from broker.identity.workload_api import WorkloadApiIdentitySource
from tests.support.broker import (
    Identity,
    InProcessBroker,
    client_context,
    eventually,
    in_process_broker,
    server_certificate,
)
from tests.support.pki import Svid, TrustDomain
from tests.support.workload_api import WorkloadApiServer


async def _whoami(broker: InProcessBroker, ca_pem: bytes, client: Svid, workdir: Path) -> int:
    ctx = client_context(ca_pem, client, workdir)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(f"{broker.url}/v1/whoami") as resp,
    ):
        return resp.status


def _workload_api_config(identity: Identity, server: WorkloadApiServer) -> Path:
    return identity.write_config(
        identity={
            "source": "workload_api",
            "files": None,
            "workload_api": {"socket": server.socket, "timeout_seconds": 5},
        }
    )


def _publish(server: WorkloadApiServer, td: TrustDomain, broker_svid: Svid) -> None:
    server.set_x509([broker_svid], td)
    server.set_jwt_bundles({td.name: td}, issuer=td)


async def test_workload_api_source_serves_and_rotates_svid_and_bundle(
    identity: Identity, workload_api: WorkloadApiServer, tmp_path: Path
) -> None:
    """py-spiffe's client feeds the broker; SVID and bundle rotations reach new handshakes."""
    _publish(workload_api, identity.td, identity.broker)
    settings = load_settings(_workload_api_config(identity, workload_api))
    async with in_process_broker(settings) as broker:
        first = await asyncio.to_thread(server_certificate, broker.url, identity.td.bundle_pem())
        assert first.serial_number == identity.broker.cert.serial_number
        agent = identity.td.svid("/agent/claims")
        assert await _whoami(broker, identity.td.bundle_pem(), agent, tmp_path) == 200

        # 1. The SPIRE agent rotates the broker's SVID (same CA).
        rotated = identity.td.svid("/broker", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        _publish(workload_api, identity.td, rotated)

        async def sees_rotated_svid() -> bool:
            cert = await asyncio.to_thread(server_certificate, broker.url, identity.td.bundle_pem())
            return bool(cert.serial_number == rotated.cert.serial_number)

        await eventually(sees_rotated_svid)

        # 2. The trust domain's CA is replaced: new bundle, new broker SVID from the new CA.
        new_td = TrustDomain("example.org")
        new_broker = new_td.svid("/broker", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        _publish(workload_api, new_td, new_broker)

        async def sees_new_ca() -> bool:
            cert = await asyncio.to_thread(server_certificate, broker.url, new_td.bundle_pem())
            return bool(cert.serial_number == new_broker.cert.serial_number)

        await eventually(sees_new_ca)
        new_agent = new_td.svid("/agent/claims")
        assert await _whoami(broker, new_td.bundle_pem(), new_agent, tmp_path) == 200
        # The old CA is gone from the bundle: its SVIDs no longer authenticate.
        assert await _whoami(broker, new_td.bundle_pem(), agent, tmp_path) == 401


async def test_workload_api_jwt_bundle_rotation_and_jwt_svid_fetch(
    identity: Identity, workload_api: WorkloadApiServer
) -> None:
    """JWT bundles stream in from the Workload API; the broker can fetch its own JWT-SVID."""
    _publish(workload_api, identity.td, identity.broker)
    settings = load_settings(_workload_api_config(identity, workload_api))
    source = WorkloadApiIdentitySource(settings, SystemClock())
    await source.start()
    try:
        assert source.ready()
        bundle = source.snapshot().bundle("example.org")
        assert bundle is not None
        assert identity.td.jwt_kid in bundle.jwt_authorities
        token = await source.fetch_jwt_svid("vault")
        assert token.count(".") == 2

        other = TrustDomain("example.org")
        workload_api.set_jwt_bundles({"example.org": other})

        def rotated() -> bool:
            current = source.snapshot().bundle("example.org")
            return current is not None and other.jwt_kid in current.jwt_authorities

        await eventually(rotated)
    finally:
        await source.close()


async def test_workload_api_source_picks_configured_spiffe_id(
    identity: Identity, workload_api: WorkloadApiServer
) -> None:
    """When the agent offers several SVIDs, the broker takes the one it is configured as."""
    other = identity.td.svid("/something-else")
    workload_api.set_x509([other, identity.broker], identity.td)
    workload_api.set_jwt_bundles({"example.org": identity.td})
    source = WorkloadApiIdentitySource(
        load_settings(_workload_api_config(identity, workload_api)), SystemClock()
    )
    await source.start()
    try:
        assert source.snapshot().svid.spiffe_id == identity.broker_id
    finally:
        await source.close()


async def test_workload_api_unreachable_is_a_clear_start_error(
    identity: Identity, tmp_path: Path
) -> None:
    """No Workload API behind the socket: start fails with a message naming the socket."""
    missing = f"unix://{tmp_path}/nothing.sock"
    settings = load_settings(
        identity.write_config(
            identity={
                "source": "workload_api",
                "files": None,
                "workload_api": {"socket": missing, "timeout_seconds": 0.5},
            }
        )
    )
    source = WorkloadApiIdentitySource(settings, SystemClock())
    with pytest.raises(IdentityError, match=r"nothing\.sock"):
        await source.start()


def test_local_workload_api_requires_the_security_header(
    workload_api: WorkloadApiServer, identity: Identity
) -> None:
    """Like SPIRE, the test Workload API refuses calls without `workload.spiffe.io: true`."""
    workload_api.set_x509([identity.broker], identity.td)
    with grpc.insecure_channel(f"unix:{workload_api.path}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as excinfo:
            next(iter(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=2)))
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ok = next(
            iter(
                stub.FetchX509SVID(
                    workload_pb2.X509SVIDRequest(),
                    metadata=[("workload.spiffe.io", "true")],
                    timeout=2,
                )
            )
        )
        assert ok.svids[0].spiffe_id == identity.broker_id
    assert workload_api.rejected_without_header == 1


async def test_files_source_rotates_svid_and_bundle(identity: Identity, tmp_path: Path) -> None:
    """New files (as spiffe-helper writes them) reach new handshakes without a restart."""
    async with in_process_broker(identity.settings()) as broker:
        agent = identity.td.svid("/agent/claims")
        assert await _whoami(broker, identity.td.bundle_pem(), agent, tmp_path) == 200

        new_td = TrustDomain("example.org")
        new_broker = new_td.svid("/broker", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        Identity(new_td, new_broker, identity.directory).write_files()

        async def sees_new_svid() -> bool:
            cert = await asyncio.to_thread(server_certificate, broker.url, new_td.bundle_pem())
            return bool(cert.serial_number == new_broker.cert.serial_number)

        await eventually(sees_new_svid)
        assert (
            await _whoami(broker, new_td.bundle_pem(), new_td.svid("/agent/claims"), tmp_path)
            == 200
        )
        assert await _whoami(broker, new_td.bundle_pem(), agent, tmp_path) == 401


async def test_files_source_keeps_old_material_when_new_files_are_invalid(
    identity: Identity,
) -> None:
    """A half-written rotation (key not matching the certificate) keeps the previous SVID."""
    source = FilesIdentitySource(identity.settings(), SystemClock())
    await source.start()
    try:
        before = source.snapshot().fingerprint
        stranger = identity.td.svid("/broker")
        (identity.directory / "broker" / "key.pem").write_bytes(stranger.key_pem())
        assert await source.reload_if_changed() is False
        assert source.snapshot().fingerprint == before
        assert source.ready()
        # Completing the rotation (matching certificate) is then picked up.
        (identity.directory / "broker" / "svid.pem").write_bytes(stranger.chain_pem())
        assert await source.reload_if_changed() is True
        assert source.snapshot().svid.leaf.serial_number == stranger.cert.serial_number
    finally:
        await source.close()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing-svid", "does not exist"),
        ("key-mismatch", "does not match"),
        ("wrong-spiffe-id", "configured as spiffe://example.org/broker"),
        ("garbage-bundle", "no valid PEM certificate"),
        ("bundle-with-private-key", "private key material"),
    ],
)
async def test_files_source_start_errors_are_precise(
    identity: Identity, breakage: str, message: str
) -> None:
    """Unusable identity files fail start-up with a message saying what is wrong."""
    directory = identity.directory
    if breakage == "missing-svid":
        (directory / "broker" / "svid.pem").unlink()
    elif breakage == "key-mismatch":
        (directory / "broker" / "key.pem").write_bytes(identity.td.svid().key_pem())
    elif breakage == "wrong-spiffe-id":
        identity.td.svid("/not-the-broker").write(directory / "broker")
    elif breakage == "garbage-bundle":
        (directory / "ca" / "bundle.pem").write_text("not a certificate")
    else:
        from broker.jose import public_jwk

        jwk = public_jwk(identity.td.jwt_key, alg="ES256")
        numbers = identity.td.jwt_key.private_numbers()
        import base64

        jwk["d"] = base64.urlsafe_b64encode(numbers.private_value.to_bytes(32, "big")).decode()
        (directory / "jwt" / "bundle.jwks").write_text(__import__("json").dumps({"keys": [jwk]}))
    source = FilesIdentitySource(identity.settings(), SystemClock())
    with pytest.raises(IdentityError, match=re.escape(message)):
        await source.start()
