"""Identity from files: PEM SVID and key, PEM bundle, JWKS bundle (spiffe-helper's layout).

The files are polled; a change of any of them reloads all of them. A half-written or
otherwise invalid set keeps the previous, valid material and is retried on the next poll,
so a rotation by spiffe-helper (or a Kubernetes Secret update) never takes the broker down.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from broker.identity.bundles import parse_jwt_bundles, parse_pem_certificates
from broker.identity.material import (
    IdentityError,
    IdentitySnapshot,
    PublicKey,
    TrustBundle,
    build_snapshot,
)
from broker.tasks import stop_task
from broker.typing import Clock, SnapshotListener

if TYPE_CHECKING:
    from broker.config.settings import Settings

__all__ = ["FilesIdentitySource"]

log = structlog.get_logger(__name__)


class FilesIdentitySource:
    """An `IdentitySource` over files on disk, reloaded when they change."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        """Create the source (nothing is read until `start`).

        Args:
            settings: The broker settings; `identity.files` must be set.
            clock: For expiry checks.
        """
        files = settings.identity.files
        if files is None:
            raise IdentityError("identity.files is not configured")
        self._settings = settings
        self._files = files
        self._clock = clock
        self._snapshot: IdentitySnapshot | None = None
        self._listeners: list[SnapshotListener] = []
        self._stamp: tuple[tuple[int, int, int], ...] = ()
        self._task: asyncio.Task[None] | None = None

    def _paths(self) -> list[Path]:
        paths = [self._files.svid, self._files.key, self._files.bundle]
        if self._files.jwt_bundle is not None:
            paths.append(self._files.jwt_bundle)
        for domain in self._settings.identity.federation:
            paths.extend(p for p in (domain.bundle, domain.jwt_bundle) if p is not None)
        return paths

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in self._paths():
            try:
                st = path.stat()
            except OSError:
                out.append((0, 0, 0))
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _read(self, path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise IdentityError(f"{what} file {path} does not exist") from None
        except OSError as exc:
            raise IdentityError(f"cannot read {what} file {path}: {exc.strerror}") from None

    def _load(self) -> IdentitySnapshot:
        """Read and validate every file (blocking; run off the event loop)."""
        td = self._settings.trust_domain
        chain = parse_pem_certificates(self._read(self._files.svid, "SVID"), what="SVID file")
        key_pem = self._read(self._files.key, "SVID key")
        try:
            key = load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise IdentityError(
                f"SVID key file {self._files.key} is not a PEM private key"
            ) from None
        authorities = parse_pem_certificates(
            self._read(self._files.bundle, "bundle"), what="bundle file"
        )
        jwt: dict[str, dict[str, PublicKey]] = {}
        if self._files.jwt_bundle is not None:
            jwt.update(
                parse_jwt_bundles(
                    self._read(self._files.jwt_bundle, "JWT bundle"),
                    default_trust_domain=td,
                    what="JWT bundle file",
                )
            )
        bundles = {td: TrustBundle(td, tuple(authorities), jwt.get(td, {}))}
        for domain in self._settings.identity.federation:
            fed_x509 = (
                parse_pem_certificates(self._read(domain.bundle, "bundle"), what=str(domain.bundle))
                if domain.bundle is not None
                else []
            )
            fed_jwt = (
                parse_jwt_bundles(
                    self._read(domain.jwt_bundle, "JWT bundle"),
                    default_trust_domain=domain.trust_domain,
                    what=str(domain.jwt_bundle),
                ).get(domain.trust_domain, {})
                if domain.jwt_bundle is not None
                else jwt.get(domain.trust_domain, {})
            )
            bundles[domain.trust_domain] = TrustBundle(
                domain.trust_domain,
                tuple(fed_x509),
                fed_jwt,
            )
        return build_snapshot(
            chain=chain,
            private_key=key,
            bundles=bundles,
            expected_spiffe_id=self._settings.spiffe_id,
            trust_domain=td,
            accepted_domains=self._settings.trusted_domains,
        )

    async def start(self) -> None:
        """Load the files once and start watching them.

        Raises:
            IdentityError: The files are missing or invalid.
        """
        self._stamp = await asyncio.to_thread(self._stat)
        self._snapshot = await asyncio.to_thread(self._load)
        if not _is_private(self._files.key):
            log.warning("SVID key file is readable by group or others", path=str(self._files.key))
        log.info(
            "identity loaded",
            source="files",
            spiffe_id=self._snapshot.svid.spiffe_id,
            not_after=self._snapshot.svid.not_after.isoformat(),
        )
        self._task = asyncio.create_task(self._watch(), name="identity-files-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._files.poll_seconds)
            try:
                await self.reload_if_changed()
            except Exception:  # a watcher must never die; the next poll retries
                log.exception("identity file watch failed")

    async def reload_if_changed(self) -> bool:
        """Reload when any file changed; returns whether a new snapshot was published."""
        stamp = await asyncio.to_thread(self._stat)
        if stamp == self._stamp:
            return False
        try:
            snapshot = await asyncio.to_thread(self._load)
        except IdentityError as exc:
            # Possibly mid-rotation: keep the old material and retry on the next poll.
            log.warning("identity files changed but are not usable yet", reason=str(exc))
            return False
        self._stamp = stamp
        if self._snapshot is not None and snapshot.fingerprint == self._snapshot.fingerprint:
            return False
        self._snapshot = snapshot
        log.info(
            "identity rotated",
            source="files",
            spiffe_id=snapshot.svid.spiffe_id,
            not_after=snapshot.svid.not_after.isoformat(),
        )
        for listener in list(self._listeners):
            listener(snapshot)
        return True

    async def close(self) -> None:
        """Stop watching."""
        await stop_task(self._task)
        self._task = None

    def snapshot(self) -> IdentitySnapshot:
        """Return the current material."""
        if self._snapshot is None:
            raise IdentityError("identity material is not loaded")
        return self._snapshot

    def ready(self) -> bool:
        """Whether material is loaded and the SVID has not expired."""
        return self._snapshot is not None and self._snapshot.svid.not_after > self._clock.now()

    def subscribe(self, listener: SnapshotListener) -> None:
        """Call `listener` with each new snapshot."""
        self._listeners.append(listener)

    async def fetch_jwt_svid(self, audience: str) -> str:
        """Files hold no JWT-SVID signing capability."""
        raise IdentityError(
            f"identity source 'files' cannot mint JWT-SVIDs (audience {audience}); "
            "use the Workload API source or X.509 (cert) authentication"
        )


def _is_private(path: Path) -> bool:
    """Whether a key file is readable by its owner only."""
    try:
        return (path.stat().st_mode & 0o077) == 0
    except OSError:
        return True  # a missing file is reported by the loader, not here
