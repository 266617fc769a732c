"""The `identity:` section: where the broker's own SVID and the trust bundles come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from broker.config.reader import Reader

__all__ = [
    "FederatedDomain",
    "FilesIdentitySettings",
    "IdentitySettings",
    "WorkloadApiSettings",
    "parse_identity",
]


@dataclass(frozen=True, slots=True)
class FilesIdentitySettings:
    """PEM/JWKS files, as spiffe-helper writes them; reloaded when they change."""

    svid: Path
    key: Path
    bundle: Path
    jwt_bundle: Path | None
    poll_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class WorkloadApiSettings:
    """The SPIFFE Workload API (SPIRE agent) endpoint."""

    socket: str | None
    timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class FederatedDomain:
    """A foreign trust domain whose SVIDs are accepted, each checked against its own bundle."""

    trust_domain: str
    bundle: Path | None = None
    jwt_bundle: Path | None = None


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """Where the broker's own SVID and the trust bundles come from."""

    source: Literal["files", "workload_api"]
    files: FilesIdentitySettings | None
    workload_api: WorkloadApiSettings | None
    federation: tuple[FederatedDomain, ...] = ()


def parse_identity(reader: Reader, trust_domain: str) -> IdentitySettings:
    """Parse the `identity:` section.

    Raises:
        ConfigError: Naming the file and the key.
    """
    source = reader.string("source", choices=("files", "workload_api"))
    files: FilesIdentitySettings | None = None
    workload_api: WorkloadApiSettings | None = None
    if source == "files":
        section = reader.section("files", required=True)
        files = FilesIdentitySettings(
            svid=section.path("svid"),
            key=section.path("key"),
            bundle=section.path("bundle"),
            jwt_bundle=section.optional_path("jwt_bundle"),
            poll_seconds=section.number("poll_seconds", 2.0, minimum=0.1, maximum=3600),
        )
        section.finish()
        if reader.has("workload_api"):
            raise reader.error("workload_api", "is set but identity.source is 'files'")
    else:
        section = reader.section("workload_api")
        socket = section.optional_string("socket")
        if socket is not None and not socket.startswith("unix:"):
            raise section.error("socket", "must be a unix: address (py-spiffe supports no other)")
        workload_api = WorkloadApiSettings(
            socket=socket,
            timeout_seconds=section.number("timeout_seconds", 10.0, minimum=0.1, maximum=600),
        )
        section.finish()
        if reader.has("files"):
            raise reader.error("files", "is set but identity.source is 'workload_api'")

    federation: list[FederatedDomain] = []
    for item in reader.sections("federation"):
        domain = item.trust_domain("trust_domain")
        if domain == trust_domain:
            raise item.error("trust_domain", "is our own trust domain, not a federated one")
        bundle = item.optional_path("bundle")
        jwt_bundle = item.optional_path("jwt_bundle")
        if source == "files" and bundle is None and jwt_bundle is None:
            raise item.error("bundle", "is required with identity.source 'files'")
        if source == "workload_api" and (bundle or jwt_bundle):
            raise item.error("bundle", "comes from the Workload API with source 'workload_api'")
        item.finish()
        federation.append(FederatedDomain(domain, bundle, jwt_bundle))
    reader.finish()
    return IdentitySettings(source, files, workload_api, tuple(federation))  # type: ignore[arg-type]
