"""Small X.509 and TLS helpers shared by the broker and `broker-hook` (no heavy imports)."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509

__all__ = ["load_cert_chain", "spiffe_id_of"]


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


def load_cert_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and key from memory.

    `ssl` only loads from paths; an anonymous memory file keeps the key off the disk. Where
    memfd is unavailable, a private (0700) temporary directory is used and removed at once.
    """
    data = chain_pem + key_pem
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("broker-svid", getattr(os, "MFD_CLOEXEC", 0))
        try:
            with os.fdopen(os.dup(fd), "wb") as handle:
                handle.write(data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="broker-tls-") as tmp:  # pragma: no cover
        path = Path(tmp) / "svid.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        ctx.load_cert_chain(str(path))
