"""The pod's identity from files, as spiffe-helper writes them (or any layout, by explicit paths).

Default names in `--svid-dir`: `svid.pem` (leaf then intermediates), `svid_key.pem` (PKCS#8),
`svid_bundle.pem` (the trust domain's X.509 authorities), and optionally a JWT-SVID file.
The files are looked at again before every request: when they change (rotation), the new
SVID is used; while they are half-written or inconsistent (key not matching the
certificate), the previous SVID is kept and the next request tries again.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jwt
import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from broker.hook.errors import EXIT_NO_IDENTITY, HookError
from broker.hook.identity.tls import client_context, spiffe_id_of

__all__ = ["FileIdentity", "SvidFiles"]

log = structlog.get_logger("broker.hook")

SVID_NAME = "svid.pem"
KEY_NAME = "svid_key.pem"
BUNDLE_NAME = "svid_bundle.pem"

_Stamp = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True, slots=True)
class SvidFiles:
    """Where the SVID, its key, the bundle and (optionally) a JWT-SVID are."""

    svid: Path
    key: Path
    bundle: Path
    jwt_svid: Path | None = None

    @classmethod
    def locate(
        cls,
        directory: Path | None,
        *,
        svid: Path | None = None,
        key: Path | None = None,
        bundle: Path | None = None,
        jwt_svid: Path | None = None,
    ) -> SvidFiles:
        """The spiffe-helper names in `directory`, each replaced by an explicit path if given.

        Raises:
            HookError: A file has neither an explicit path nor a directory (exit 2).
        """

        def pick(explicit: Path | None, name: str, flag: str) -> Path:
            if explicit is not None:
                return explicit
            if directory is None:
                raise HookError(2, f"{flag} is required without --svid-dir")
            return directory / name

        return cls(
            pick(svid, SVID_NAME, "--svid-file"),
            pick(key, KEY_NAME, "--svid-key-file"),
            pick(bundle, BUNDLE_NAME, "--svid-bundle-file"),
            jwt_svid,
        )


@dataclass(frozen=True, slots=True)
class _Material:
    spiffe_id: str
    not_after: datetime
    chain_pem: bytes
    bundle_pem: str
    key_pem: bytes = field(repr=False)


class FileIdentity:
    """An `Identity` read from files, reloaded when they change."""

    def __init__(self, files: SvidFiles, *, clock: Callable[[], float] = time.time) -> None:
        """Read the files once (they must be usable now).

        Raises:
            HookError: Missing, unreadable, inconsistent or expired SVID (exit 3).
        """
        self._files = files
        self._clock = clock
        self._stamp: _Stamp | None = None
        self._material: _Material | None = None
        self._current()

    @property
    def spiffe_id(self) -> str:
        """The SPIFFE ID of the SVID in the files."""
        return self._current().spiffe_id

    def tls_context(self, *, present_svid: bool) -> ssl.SSLContext:
        """A client context trusting the bundle file, presenting the SVID if asked."""
        material = self._current()
        if present_svid:
            return client_context(material.bundle_pem, material.chain_pem, material.key_pem)
        return client_context(material.bundle_pem, None, None)

    def jwt_svid(self, audience: str) -> str:
        """The JWT-SVID in `--jwt-svid-file` (read at every call), if it is for `audience`."""
        path = self._files.jwt_svid
        if path is None:
            raise HookError(EXIT_NO_IDENTITY, "--auth jwt with SVID files needs --jwt-svid-file")
        try:
            token = path.read_text().strip()
            claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
        except OSError as exc:
            raise HookError(EXIT_NO_IDENTITY, f"cannot read {path}: {exc.strerror}") from None
        except jwt.PyJWTError:
            raise HookError(EXIT_NO_IDENTITY, f"{path} holds no JWT-SVID") from None
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if audience not in audiences:
            raise HookError(EXIT_NO_IDENTITY, f"the JWT-SVID in {path} is not for {audience}")
        if float(claims.get("exp", 0)) <= self._clock():
            raise HookError(EXIT_NO_IDENTITY, f"the JWT-SVID in {path} has expired")
        return token

    def close(self) -> None:
        """Nothing to release."""

    def _stat(self) -> _Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for path in (self._files.svid, self._files.key, self._files.bundle):
            try:
                st = path.stat()
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _current(self) -> _Material:
        stamp = self._stat()
        material = self._material
        if material is None or stamp != self._stamp:
            try:
                fresh = _load(self._files)
            except HookError as exc:
                if material is None:
                    raise
                log.warning("SVID files unusable; keeping the previous SVID", reason=str(exc))
            else:
                if material is not None:
                    log.info(
                        "SVID reloaded from files",
                        spiffe_id=fresh.spiffe_id,
                        not_after=fresh.not_after.isoformat(),
                    )
                self._material, self._stamp, material = fresh, stamp, fresh
        assert material is not None
        if material.not_after.timestamp() <= self._clock():
            raise HookError(
                EXIT_NO_IDENTITY,
                f"the SVID in {self._files.svid} expired at {material.not_after.isoformat()}",
            )
        return material


def _load(files: SvidFiles) -> _Material:
    try:
        chain = x509.load_pem_x509_certificates(files.svid.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        bundle = x509.load_pem_x509_certificates(files.bundle.read_bytes())
    except OSError as exc:
        raise HookError(
            EXIT_NO_IDENTITY, f"no SVID from files: {exc.filename}: {exc.strerror}"
        ) from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise HookError(
            EXIT_NO_IDENTITY,
            f"no SVID from files: {files.svid}, {files.key} or {files.bundle} is not valid PEM",
        ) from None
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise HookError(EXIT_NO_IDENTITY, f"the key in {files.key} does not match {files.svid}")
    spiffe_id = spiffe_id_of(leaf)
    if spiffe_id is None:
        raise HookError(EXIT_NO_IDENTITY, f"{files.svid} is not an X.509-SVID (one spiffe:// URI)")
    return _Material(
        spiffe_id=spiffe_id,
        not_after=leaf.not_valid_after_utc.astimezone(UTC),
        chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        bundle_pem="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in bundle),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
