"""TLS helpers shared by the identity sources: client contexts and SPIFFE IDs of certificates."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509

__all__ = ["client_context", "spiffe_id_of"]


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    """The single SPIFFE URI SAN of a certificate, or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        return None
    return uris[0]


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
        _load_cert_chain(ctx, chain_pem, key_pem)
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    # `ssl` only loads from paths; an anonymous memory file keeps the key off the disk.
    data = chain_pem + key_pem
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("broker-hook-svid", getattr(os, "MFD_CLOEXEC", 0))
        try:
            with os.fdopen(os.dup(fd), "wb") as handle:
                handle.write(data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="broker-hook-") as tmp:  # pragma: no cover
        path = Path(tmp) / "svid.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        ctx.load_cert_chain(str(path))
