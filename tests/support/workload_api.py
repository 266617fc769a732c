"""A local SPIFFE Workload API server for tests: real gRPC over a Unix socket.

Built on the protobuf stubs py-spiffe ships, so the broker's `workload_api` identity
source (py-spiffe's real client) talks to it exactly as to a SPIRE agent. Like SPIRE, it
refuses calls without the `workload.spiffe.io: true` metadata. Tests push rotations with
`set_x509` / `set_jwt_bundles`; open streams deliver them at once.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import jwt
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tests.support.pki import Svid, TrustDomain

_HEADER = ("workload.spiffe.io", "true")


class _State:
    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.version = 0
        self.x509: workload_pb2.X509SVIDResponse | None = None
        self.x509_bundles: workload_pb2.X509BundlesResponse | None = None
        self.jwt_bundles: workload_pb2.JWTBundlesResponse | None = None
        self.jwt_issuer: TrustDomain | None = None
        self.default_id = ""
        self.calls: list[str] = []
        self.rejected_without_header = 0


class _Servicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
    def __init__(self, state: _State) -> None:
        self.state = state

    def _check(self, context: grpc.ServicerContext, name: str) -> None:
        self.state.calls.append(name)
        if _HEADER not in tuple(context.invocation_metadata()):
            self.state.rejected_without_header += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")

    def _stream(self, context: grpc.ServicerContext, attribute: str) -> Iterator[Any]:
        state = self.state
        context.add_callback(lambda: _notify(state))
        seen = -1
        while context.is_active():
            with state.changed:
                if state.version == seen or getattr(state, attribute) is None:
                    state.changed.wait(timeout=0.2)
                    continue
                seen = state.version
                message = getattr(state, attribute)
            yield message

    def FetchX509SVID(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._check(context, "FetchX509SVID")
        yield from self._stream(context, "x509")

    def FetchX509Bundles(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._check(context, "FetchX509Bundles")
        yield from self._stream(context, "x509_bundles")

    def FetchJWTBundles(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._check(context, "FetchJWTBundles")
        yield from self._stream(context, "jwt_bundles")

    def FetchJWTSVID(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(context, "FetchJWTSVID")
        issuer = self.state.jwt_issuer
        if issuer is None or not request.audience:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no JWT-SVID available")
        spiffe_id = request.spiffe_id or self.state.default_id
        now = int(time.time())
        token = jwt.encode(
            {
                "sub": spiffe_id,
                "aud": list(request.audience),
                "iat": now,
                "exp": now + 300,
                "jti": secrets.token_hex(8),
            },
            issuer.jwt_key,
            algorithm="ES256",
            headers={"kid": issuer.jwt_kid, "typ": "JWT"},
        )
        return workload_pb2.JWTSVIDResponse(
            svids=[workload_pb2.JWTSVID(spiffe_id=spiffe_id, svid=token)]
        )

    def ValidateJWTSVID(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(context, "ValidateJWTSVID")
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented by the test server")


def _notify(state: _State) -> None:
    with state.changed:
        state.changed.notify_all()


class WorkloadApiServer:
    """The server; `socket` is the `unix:` address for SPIFFE_ENDPOINT_SOCKET."""

    def __init__(self, socket_path: Path) -> None:
        self.path = socket_path
        self.socket = f"unix://{socket_path}"
        self._state = _State()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(
            _Servicer(self._state), self._server
        )
        self._server.add_insecure_port(f"unix:{socket_path}")

    def start(self) -> WorkloadApiServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=0).wait(5)

    @property
    def calls(self) -> list[str]:
        return list(self._state.calls)

    @property
    def rejected_without_header(self) -> int:
        return self._state.rejected_without_header

    def set_x509(
        self,
        svids: list[Svid],
        trust_domain: TrustDomain,
        federated: Mapping[str, TrustDomain] | None = None,
    ) -> None:
        """Publish X.509-SVIDs (first is the default) and bundles; streams see it at once."""
        fed = {f"spiffe://{name}": td.bundle_der() for name, td in (federated or {}).items()}
        response = workload_pb2.X509SVIDResponse(
            svids=[
                workload_pb2.X509SVID(
                    spiffe_id=s.spiffe_id,
                    x509_svid=s.chain_der(),
                    x509_svid_key=s.key_der(),
                    bundle=trust_domain.bundle_der(),
                )
                for s in svids
            ],
            federated_bundles=fed,
        )
        bundles = workload_pb2.X509BundlesResponse(
            bundles={f"spiffe://{trust_domain.name}": trust_domain.bundle_der(), **fed}
        )
        with self._state.changed:
            self._state.x509 = response
            self._state.x509_bundles = bundles
            self._state.default_id = svids[0].spiffe_id if svids else ""
            self._state.version += 1
            self._state.changed.notify_all()

    def set_jwt_bundles(
        self, domains: Mapping[str, TrustDomain], issuer: TrustDomain | None = None
    ) -> None:
        """Publish JWT bundles; `issuer` signs JWT-SVIDs fetched from this server."""
        response = workload_pb2.JWTBundlesResponse(
            bundles={f"spiffe://{name}": td.jwks_bytes() for name, td in domains.items()}
        )
        with self._state.changed:
            self._state.jwt_bundles = response
            if issuer is not None:
                self._state.jwt_issuer = issuer
            self._state.version += 1
            self._state.changed.notify_all()
