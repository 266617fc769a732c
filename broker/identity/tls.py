"""The TLS listener's context: the broker's SVID as server certificate, rotated live.

Two decisions here deserve a note.

**Client certificates are requested, not verified, by the TLS layer.** The contract wants
an untrusted or expired client SVID answered with a 401 problem document (and an audit
record), and a federated SVID checked against its own trust domain's bundle only. A TLS
stack that verifies against the union of all bundles can do neither: it aborts the
handshake. So, exactly like go-spiffe's `tlsconfig` (`RequestClientCert` plus a custom
`VerifyPeerCertificate`), the listener asks for a certificate and lets
`broker.authn.x509` verify the presented chain against the right bundle on every request.
Proof of possession is unaffected: OpenSSL still checks the client's CertificateVerify
signature. Python's `ssl` has no verify-callback API, so the accept-all callback is set
with ctypes on the context's `SSL_CTX`, after a self-check that the pointer is right; if
the check fails, the listener falls back to OpenSSL verification against all bundles
(bad certificates then get a TLS alert instead of a 401) and says so in the log.

**Rotation without restart.** Each new snapshot builds a new `SSLContext`; the listener's
base context has an `sni_callback` (called for every ClientHello, with or without SNI) that
moves the connection onto the newest context, so new handshakes see the new certificate
and old connections finish undisturbed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ssl
import sys
import weakref

import structlog
from cryptography.hazmat.primitives import serialization

from broker.identity.material import IdentitySnapshot
from broker.tlsutil import load_cert_chain
from broker.typing import IdentitySource

__all__ = ["ServerTls", "connection_chain", "load_cert_chain", "peer_chain"]

# Each connection's client certificate chain, read once (forgotten with the connection).
_CHAINS: weakref.WeakKeyDictionary[ssl.SSLObject, tuple[bytes, ...]] = weakref.WeakKeyDictionary()

log = structlog.get_logger(__name__)

_SSL_VERIFY_PEER = 1
_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_SESS_CACHE_OFF = 0
_ENCODING_DER = 2  # _ssl.ENCODING_DER, for the Certificate objects of Python < 3.13


class _OpenSSL:
    """The libssl that CPython's `_ssl` module is linked against, through ctypes."""

    VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        import _ssl  # noqa: PLC0415 - the extension module whose libssl we must share

        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, self.VerifyCallback]
        lib.SSL_CTX_set_verify.restype = None
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        self.lib = lib
        # Accept every presented chain at the TLS layer; broker.authn.x509 verifies it.
        self.accept_all = self.VerifyCallback(lambda _ok, _store: 1)

    @staticmethod
    def ctx_pointer(ctx: ssl.SSLContext) -> int | None:
        # CPython's PySSLContext starts with PyObject_HEAD followed by `SSL_CTX *ctx`.
        value = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        return int(value) if value else None

    def request_any_client_certificate(self, ctx: ssl.SSLContext) -> bool:
        pointer = self.ctx_pointer(ctx)
        if pointer is None:
            return False
        # Self-check: the pointer must be the SSL_CTX whose state Python reports.
        if self.lib.SSL_CTX_get_verify_mode(pointer) != _SSL_VERIFY_PEER:
            return False
        if int(self.lib.SSL_CTX_get_options(pointer)) != int(ctx.options):
            return False
        self.lib.SSL_CTX_set_verify(pointer, _SSL_VERIFY_PEER, self.accept_all)
        # No session resumption: every connection presents its full client chain.
        self.lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)
        return True


def _load_openssl() -> _OpenSSL | None:
    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 14):
        return None
    try:
        return _OpenSSL()
    except (OSError, AttributeError):
        return None


_OPENSSL = _load_openssl()


class ServerTls:
    """The listener's `SSLContext`, following every rotation of the identity source."""

    def __init__(self, source: IdentitySource) -> None:
        """Build the context from the source's current material and follow its rotations.

        Args:
            source: A started identity source.
        """
        self._app_verifies = True
        self._base = self._build(source.snapshot())
        self._base.sni_callback = self._on_client_hello
        self._current = self._base
        source.subscribe(self._on_rotation)
        if not self._app_verifies:
            log.warning(
                "client certificates are verified by OpenSSL against all bundles: untrusted "
                "client certificates get a TLS alert instead of a 401"
            )

    @property
    def context(self) -> ssl.SSLContext:
        """The context to give the listener."""
        return self._base

    def _on_rotation(self, snapshot: IdentitySnapshot) -> None:
        self._current = self._build(snapshot)

    def _on_client_hello(
        self,
        connection: ssl.SSLObject | ssl.SSLSocket,
        _server_name: str | None,
        _ctx: ssl.SSLContext,
    ) -> None:
        current = self._current
        if current is not self._base:
            connection.context = current

    def _build(self, snapshot: IdentitySnapshot) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_TICKET
        # No renegotiation: a connection's client certificate cannot change under it (the
        # broker remembers it per connection), and no renegotiation CPU floods.
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        ctx.num_tickets = 0
        load_cert_chain(ctx, snapshot.svid.chain_pem(), snapshot.svid.key_pem())
        ctx.verify_mode = ssl.CERT_OPTIONAL
        if _OPENSSL is None or not _OPENSSL.request_any_client_certificate(ctx):
            self._app_verifies = False
            authorities = [
                cert.public_bytes(serialization.Encoding.PEM).decode()
                for bundle in snapshot.bundles.values()
                for cert in bundle.x509_authorities
            ]
            ctx.load_verify_locations(cadata="".join(authorities))
        return ctx


def connection_chain(transport: asyncio.BaseTransport | None) -> tuple[bytes, ...]:
    """The client certificate chain of a connection (DER, leaf first), or () if none.

    Read once per connection: TLS renegotiation is off (`ServerTls`), so the chain cannot
    change for the connection's life.
    """
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return ()
    # Keyed by the connection's SSLObject: unique to the connection and gone with it (a
    # transport cannot be weakly referenced under uvloop).
    chain = _CHAINS.get(ssl_object)
    if chain is None:
        chain = _CHAINS[ssl_object] = peer_chain(ssl_object)
    return chain


def peer_chain(ssl_object: ssl.SSLObject | None) -> tuple[bytes, ...]:
    """The certificate chain the peer presented (DER, leaf first), or () if none.

    Args:
        ssl_object: The connection's `ssl.SSLObject` (from the transport).
    """
    if ssl_object is None:
        return ()
    getter = getattr(ssl_object, "get_unverified_chain", None)  # public from Python 3.13
    if getter is None:
        inner = getattr(ssl_object, "_sslobj", None)
        getter = getattr(inner, "get_unverified_chain", None)
    if getter is not None:
        # Without a client certificate, Python 3.11 reports [None] rather than [].
        chain = [c for c in (getter() or ()) if c is not None]
        if chain:
            return tuple(
                c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in chain
            )
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()
