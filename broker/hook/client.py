"""The hook's side of the conversation: the pod's SVID, mTLS to the broker, one request.

The broker is authenticated like any SPIFFE peer: its certificate chain must verify
against the trust bundle from the Workload API, and its SPIFFE ID must be the expected
broker ID (hostnames play no part).
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import JwtSource, SpiffeId, X509Source
from spiffe.errors import PySpiffeError

from broker.identity.material import spiffe_id_of
from broker.identity.tls import load_cert_chain

__all__ = ["BrokerClient", "BrokerResponse", "HookError", "WorkloadIdentity"]

MAX_RESPONSE_BYTES = 1024 * 1024


class HookError(Exception):
    """A failure with the exit code it maps to."""

    def __init__(self, code: int, message: str, *, retry_after: float | None = None) -> None:
        """Create the error."""
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


EXIT_USAGE = 2
EXIT_NO_IDENTITY = 3
EXIT_UNREACHABLE = 4
EXIT_REFUSED = 5
EXIT_RATE_LIMITED = 6
EXIT_OUTPUT = 7


class WorkloadIdentity:
    """The pod's identity from the SPIFFE Workload API (kept fresh by py-spiffe)."""

    def __init__(self, socket: str | None, timeout: float) -> None:
        """Connect to the Workload API and wait for the first SVID.

        Raises:
            HookError: No SVID (exit code 3).
        """
        try:
            self._x509 = X509Source(socket_path=socket, timeout_in_seconds=timeout)
        except (PySpiffeError, OSError, ValueError) as exc:
            raise HookError(EXIT_NO_IDENTITY, f"no SVID from the Workload API: {exc}") from None
        self._socket = socket
        self._timeout = timeout
        self._jwt: JwtSource | None = None

    @property
    def spiffe_id(self) -> str:
        """The pod's SPIFFE ID."""
        return str(self._x509.get_x509_context().default_svid.spiffe_id)

    def tls_context(self, *, present_svid: bool) -> ssl.SSLContext:
        """A client context trusting our trust domain's bundle, presenting our SVID."""
        context = self._x509.get_x509_context()
        svid = context.default_svid
        bundle = context.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        if bundle is None:
            raise HookError(
                EXIT_NO_IDENTITY, "the Workload API gave no bundle for our trust domain"
            )
        pem = "".join(
            c.public_bytes(serialization.Encoding.PEM).decode() for c in bundle.x509_authorities
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # the server is authorised by its SPIFFE ID instead
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=pem)
        if present_svid:
            chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
            key = svid.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            load_cert_chain(ctx, chain, key)
        return ctx

    def jwt_svid(self, audience: str) -> str:
        """A JWT-SVID of the pod for `audience`."""
        try:
            if self._jwt is None:
                self._jwt = JwtSource(socket_path=self._socket, timeout_in_seconds=self._timeout)
            return str(self._jwt.fetch_svid({audience}, None, self._timeout).token)
        except (PySpiffeError, OSError) as exc:
            raise HookError(EXIT_NO_IDENTITY, f"no JWT-SVID from the Workload API: {exc}") from None

    def close(self) -> None:
        """Close the Workload API streams."""
        self._x509.close()
        if self._jwt is not None:
            self._jwt.close()


@dataclass(frozen=True, slots=True)
class BrokerResponse:
    """A decoded broker response."""

    status: int
    body: Any
    retry_after: float | None


class BrokerClient:
    """Talks to the broker as the pod's workload."""

    def __init__(
        self, url: str, broker_id: str, identity: WorkloadIdentity, *, auth: str, timeout: float
    ) -> None:
        """Create the client.

        Args:
            url: `https://host:port` of the broker.
            broker_id: The SPIFFE ID the broker must present.
            identity: The pod's identity.
            auth: `x509` (mTLS) or `jwt` (a JWT-SVID bearer over TLS).
            timeout: Socket timeout per request.
        """
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise HookError(EXIT_USAGE, f"--broker-url must be an https:// URL, not {url!r}")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._broker_id = broker_id
        self._identity = identity
        self._auth = auth
        self._timeout = timeout

    def post(self, path: str, body: dict[str, Any]) -> BrokerResponse:
        """POST JSON to the broker.

        Raises:
            HookError: The broker cannot be reached or is not who it should be (exit 4).
        """
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._auth == "jwt":
            headers["Authorization"] = f"Bearer {self._identity.jwt_svid(self._broker_id)}"
        context = self._identity.tls_context(present_svid=self._auth == "x509")
        connection = http.client.HTTPSConnection(
            self._host, self._port, context=context, timeout=self._timeout
        )
        try:
            connection.connect()
            self._check_server(connection)
            connection.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            response = connection.getresponse()
            raw = response.read(MAX_RESPONSE_BYTES)
            retry = response.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as exc:
            raise HookError(EXIT_UNREACHABLE, f"broker unreachable: {exc}") from None
        finally:
            connection.close()
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = None
        return BrokerResponse(
            response.status, decoded, float(retry) if retry and retry.isdigit() else None
        )

    def _check_server(self, connection: http.client.HTTPSConnection) -> None:
        sock = connection.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        server_id = spiffe_id_of(x509.load_der_x509_certificate(der)) if der else None
        if server_id != self._broker_id:
            raise HookError(
                EXIT_UNREACHABLE,
                f"the server at {self._host}:{self._port} is "
                f"{server_id or 'not a SPIFFE workload'}, "
                f"not the broker {self._broker_id}",
            )


def default_broker_id(own_id: str) -> str:
    """`spiffe://<our trust domain>/broker` (the development layout's broker ID)."""
    return f"spiffe://{SpiffeId(own_id).trust_domain.name}/broker"
