"""TLS helpers shared by the identity sources: client contexts and SPIFFE IDs of certificates."""

from __future__ import annotations

import ssl

from broker.tlsutil import load_cert_chain, spiffe_id_of

__all__ = ["client_context", "spiffe_id_of"]


def client_context(
    bundle_pem: str, chain_pem: bytes | None, key_pem: bytes | None
) -> ssl.SSLContext:
    """A TLS client context that trusts `bundle_pem` and presents a certificate when given.

    The server is authorised by its SPIFFE ID after the handshake, so hostnames play no part.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem)
    if chain_pem is not None and key_pem is not None:
        load_cert_chain(ctx, chain_pem, key_pem)
    return ctx
