"""The pod's identity from the SPIFFE Workload API, kept fresh by py-spiffe."""

from __future__ import annotations

import ssl

from cryptography.hazmat.primitives import serialization
from spiffe import JwtSource, X509Source
from spiffe.errors import PySpiffeError

from broker.hook.errors import EXIT_NO_IDENTITY, HookError
from broker.hook.identity.tls import client_context

__all__ = ["WorkloadIdentity"]


class WorkloadIdentity:
    """An `Identity` backed by py-spiffe's X509Source (and JwtSource on first use)."""

    def __init__(self, socket: str | None, timeout: float) -> None:
        """Connect to the Workload API and wait for the first SVID.

        Args:
            socket: `unix:///path` of the Workload API (None: `SPIFFE_ENDPOINT_SOCKET`).
            timeout: Seconds to wait for the first SVID, and per JWT-SVID fetch.

        Raises:
            HookError: No SVID (exit 3).
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
        """A client context trusting our trust domain's bundle, presenting our SVID if asked."""
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
        if not present_svid:
            return client_context(pem, None, None)
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
        key = svid.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return client_context(pem, chain, key)

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
