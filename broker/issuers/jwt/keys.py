"""The JWT issuer's signing keys: one key file, shared by every replica.

The file (JSON, mode 0600) lists keys with their activation time (`not_before`). The
newest active key signs. A key stops signing when its successor activates and stays
published in the JWKS for at least the longest credential TTL plus leeway after that, so
every token it signed still verifies. A successor can be published ahead of activation
(`publish_ahead_seconds`) so that resource servers caching the JWKS know it before use.

With `auto_rotate` (one process, or a shared writable volume) the broker adds a
successor when the active key is older than `rotation_hours` and prunes retired keys.
Several replicas instead mount the file from a Kubernetes Secret and rotate it with
`broker keys rotate --file F` (see the README); each replica re-reads the file when it
changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from broker.constants import MAX_CREDENTIAL_TTL
from broker.errors import ConfigError
from broker.fileio import write_atomic
from broker.issuers.jwt.config import JwtIssuerSettings
from broker.jose import public_jwk
from broker.tasks import stop_task
from broker.typing import Clock

__all__ = ["KeyRing", "SigningKey", "add_key", "generate_key"]

log = structlog.get_logger(__name__)

SigningPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One signing key and its schedule."""

    kid: str
    alg: str
    private_key: SigningPrivateKey = field(repr=False, compare=False)
    created_at: float
    not_before: float

    def public_jwk(self) -> dict[str, str]:
        """The public JWK (no private member)."""
        return public_jwk(self.private_key, alg=self.alg, kid=self.kid)


def generate_key(alg: str, *, now: float, not_before: float | None = None) -> SigningKey:
    """A new key for `alg` (EdDSA: Ed25519; ES256: P-256), its kid the JWK thumbprint."""
    private: SigningPrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if alg == "EdDSA"
        else ec.generate_private_key(ec.SECP256R1())
    )
    kid = public_jwk(private, alg=alg)["kid"]
    return SigningKey(kid, alg, private, now, now if not_before is None else not_before)


def _serialize(keys: Sequence[SigningKey]) -> bytes:
    entries = [
        {
            "kid": k.kid,
            "alg": k.alg,
            "created_at": int(k.created_at),
            # A scheduled key is rounded up, so it never activates (nor retires its
            # predecessor) early; an immediate key is rounded down, so it is active now.
            "not_before": math.ceil(k.not_before)
            if k.not_before > k.created_at
            else int(k.not_before),
            "private_key_pem": k.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        }
        for k in sorted(keys, key=lambda k: k.not_before)
    ]
    return (json.dumps({"keys": entries}, indent=2) + "\n").encode()


def _parse(path: Path) -> list[SigningKey]:
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: signing key file not found") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: signing key file is not readable JSON ({exc})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: keys: must be a non-empty list")
    keys: list[SigningKey] = []
    for index, entry in enumerate(entries):
        where = f"{path}: keys[{index}]"
        try:
            alg = str(entry["alg"])
            private = load_pem_private_key(str(entry["private_key_pem"]).encode(), password=None)
            kid = str(entry["kid"])
            created = float(entry.get("created_at", entry["not_before"]))
            not_before = float(entry["not_before"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: malformed key entry ({type(exc).__name__})") from None
        if (alg == "EdDSA" and isinstance(private, ed25519.Ed25519PrivateKey)) or (
            alg == "ES256"
            and isinstance(private, ec.EllipticCurvePrivateKey)
            and private.curve.name == "secp256r1"
        ):
            pass
        else:
            raise ConfigError(
                f"{where}: key does not match alg {alg!r} (EdDSA: Ed25519, ES256: P-256)"
            )
        keys.append(SigningKey(kid, alg, private, created, not_before))
    if len({k.kid for k in keys}) != len(keys):
        raise ConfigError(f"{path}: two keys share a kid")
    return keys


@contextlib.contextmanager
def key_file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path`'s lock file: one writer of the key file at a time.

    Several processes (`--workers`, or replicas on a shared volume) may find the file
    missing or a rotation due at the same moment; under the lock, each checks again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def add_key(path: Path, alg: str, *, now: float, publish_ahead: int, leeway: int) -> SigningKey:
    """Add a successor key to a key file (creating it), pruning keys retired long enough.

    Args:
        path: The key file.
        alg: Algorithm of the new key.
        now: Current time.
        publish_ahead: Seconds between publication and activation of the new key.
        leeway: Verification leeway resource servers use.

    Returns:
        The new key.
    """
    keys = _parse(path) if path.exists() else []
    new = generate_key(alg, now=now, not_before=now + publish_ahead)
    kept = [k for k in keys if not _retired(k, keys, now, leeway)]
    write_atomic(path, _serialize([*kept, new]))
    return new


def _successor(key: SigningKey, keys: Sequence[SigningKey]) -> SigningKey | None:
    # Keys are in file order, oldest first; activation ties go to the later entry.
    position = keys.index(key)
    later = [k for i, k in enumerate(keys) if (k.not_before, i) > (key.not_before, position)]
    return min(later, key=lambda k: (k.not_before, keys.index(k))) if later else None


def _retired(key: SigningKey, keys: Sequence[SigningKey], now: float, leeway: int) -> bool:
    """Whether every token `key` signed has expired (its successor active long enough)."""
    successor = _successor(key, keys)
    if successor is None or successor.not_before > now:
        return False
    return now > successor.not_before + MAX_CREDENTIAL_TTL + leeway


class KeyRing:
    """The issuer's keys, following the key file."""

    def __init__(self, settings: JwtIssuerSettings, clock: Clock) -> None:
        """Create the ring (call `load` before use)."""
        self._settings = settings
        self._clock = clock
        self._keys: list[SigningKey] = []
        # (the key list it was worked out from, the signing key, until when it holds)
        self._signing: tuple[list[SigningKey], SigningKey, float] | None = None
        self._stamp: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Every key currently held."""
        return tuple(self._keys)

    def load(self) -> None:
        """Read the key file, creating it (or an in-memory key) as configured.

        Raises:
            ConfigError: The file is missing (without auto-rotation) or invalid.
        """
        path = self._settings.keys_file
        now = self._clock.time()
        if path is None:
            log.warning(
                "jwt_issuer.keys_file is not set: signing key is in memory only; "
                "tokens stop verifying after a restart"
            )
            self._keys = [generate_key(self._settings.algorithm, now=now)]
            return
        if not path.exists():
            if not self._settings.auto_rotate:
                raise ConfigError(f"{path}: signing key file not found (auto_rotate is off)")
            with key_file_lock(path):
                if not path.exists():  # another process may have created it meanwhile
                    add_key(
                        path,
                        self._settings.algorithm,
                        now=now,
                        publish_ahead=0,
                        leeway=self._settings.leeway_seconds,
                    )
        self._read(path)

    def _read(self, path: Path) -> None:
        keys = _parse(path)
        st = path.stat()
        if not any(k.not_before <= self._clock.time() for k in keys):
            raise ConfigError(f"{path}: no key is active yet")
        self._keys = keys
        self._stamp = (st.st_mtime_ns, st.st_size)

    def signing_key(self) -> SigningKey:
        """The newest active key.

        Worked out again only when the keys change or a new one becomes active: this runs
        for every token.
        """
        now = self._clock.time()
        cached = self._signing
        if cached is not None and cached[0] is self._keys and now < cached[2]:
            return cached[1]
        active = [(k.not_before, i, k) for i, k in enumerate(self._keys) if k.not_before <= now]
        key = max(active, key=lambda t: (t[0], t[1]))[2] if active else self._keys[0]
        until = min((k.not_before for k in self._keys if k.not_before > now), default=math.inf)
        self._signing = (self._keys, key, until)
        return key

    def published(self) -> list[SigningKey]:
        """Keys verifiers must know: upcoming, active, and retired but possibly still in use."""
        now = self._clock.time()
        return [
            k for k in self._keys if not _retired(k, self._keys, now, self._settings.leeway_seconds)
        ]

    def verification_key(self, kid: str) -> SigningKey | None:
        """A published key by kid."""
        return next((k for k in self.published() if k.kid == kid), None)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document: public parts only."""
        return {"keys": [k.public_jwk() for k in self.published()]}

    def maintain(self) -> None:
        """Re-read a changed file; with auto-rotation, add a successor when due."""
        path = self._settings.keys_file
        if path is None:
            return
        try:
            st = path.stat()
            if (st.st_mtime_ns, st.st_size) != self._stamp:
                self._read(path)
                log.info("signing keys reloaded", kids=[k.kid for k in self._keys])
        except (OSError, ConfigError) as exc:
            log.error("signing key file not usable; keeping keys", reason=str(exc))  # noqa: TRY400
            return
        if not self._settings.auto_rotate:
            return
        if not self._rotation_due():
            return
        with key_file_lock(path):
            self._read(path)  # another process may have rotated meanwhile
            if not self._rotation_due():
                return
            new = add_key(
                path,
                self._settings.algorithm,
                now=self._clock.time(),
                publish_ahead=self._settings.publish_ahead_seconds,
                leeway=self._settings.leeway_seconds,
            )
            self._read(path)
        log.info("signing key rotated", new_kid=new.kid, active_from=new.not_before)

    def _rotation_due(self) -> bool:
        newest = max(self._keys, key=lambda k: k.not_before)
        return self._clock.time() - newest.not_before >= self._settings.rotation_hours * 3600

    async def start(self, interval: float = 5.0) -> None:
        """Maintain the keys in the background."""

        async def loop() -> None:
            while True:
                await self._clock.sleep(interval)
                await asyncio.to_thread(self.maintain)

        self._task = asyncio.create_task(loop(), name="issuer-keys")

    async def close(self) -> None:
        """Stop maintaining."""
        await stop_task(self._task)
        self._task = None
