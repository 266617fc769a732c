"""The key source contract, run against every implementation: a file and OpenBao KV v2.

Promises: `key()` returns the current key as a `Secret` (never shown by repr or str);
it is reused for at most `cache_seconds` on the injected clock, then read again, so a
rotated key is in use within that TTL (and not before).
Failure: a source that cannot deliver (file absent; KV path absent) raises `Unavailable`,
whose message never carries a key.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.errors import Unavailable
from broker.gateway.config import KeySourceSettings
from broker.gateway.keysource import FileKeySource, VaultKvKeySource
from broker.identity.files import FilesIdentitySource
from broker.typing import KeySource
from broker.vault.client import VaultClient
from broker.vault.config import VaultAuth, VaultSettings
from tests.support import leaks
from tests.support.broker import Identity
from tests.support.clock import ManualClock
from tests.support.openbao import IssuerVault, issuer_vault

TTL = 30.0


@dataclass
class Source:
    """An implementation under test, and how to rotate or remove its key."""

    source: KeySource
    rotate: Callable[[str], None]
    absent: KeySource


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerVault]:
    """OpenBao for the KV implementation."""
    with issuer_vault(tmp_path_factory.mktemp("keysource-bao")) as vault:
        yield vault


def new_key() -> str:
    key = secrets.token_urlsafe(24)
    leaks.remember(key)
    return key


@pytest.fixture(params=["file", "vault"])
async def impl(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Source]:
    """Each implementation, holding a first key."""
    if request.param == "file":
        path = tmp_path / "key"

        def rotate_file(value: str) -> None:
            path.write_text(value + "\n")

        yield Source(
            FileKeySource(path, TTL, clock), rotate_file, FileKeySource(tmp_path / "x", TTL, clock)
        )
        return
    bao: IssuerVault = request.getfixturevalue("bao")
    settings = VaultSettings(
        address=bao.server.address,
        auth_method=VaultAuth.TOKEN,
        auth_mount="token",
        ca_file=bao.server.ca_file,
        token_file=bao.token_file,
    )
    identity = FilesIdentitySource(Identity.create(tmp_path).settings(), clock)
    await identity.start()
    client = VaultClient(settings, identity, clock)
    await client.start()
    path = f"gateway/{secrets.token_hex(4)}"

    def rotate_kv(value: str) -> None:
        bao.root.secrets.kv.v2.create_or_update_secret(
            path=path, secret={"api_key": value}, mount_point="secret"
        )

    try:
        yield Source(
            VaultKvKeySource(client, KeySourceSettings("vault", path, cache_seconds=TTL), clock),
            rotate_kv,
            VaultKvKeySource(client, KeySourceSettings("vault", path + "-absent"), clock),
        )
    finally:
        await client.close()
        await identity.close()


async def test_key_is_read_and_never_shown(impl: Source) -> None:
    """The key comes back as a Secret; neither it nor the source's repr shows it."""
    key = new_key()
    impl.rotate(key)
    await impl.source.start()
    secret = await impl.source.key()
    assert secret.reveal() == key
    assert key not in repr(secret)
    assert key not in str(secret)
    assert key not in repr(impl.source)
    await impl.source.close()


async def test_rotation_is_picked_up_within_the_ttl(impl: Source, clock: ManualClock) -> None:
    """A rotated key is used once the cache TTL has passed, and not before."""
    first, second = new_key(), new_key()
    impl.rotate(first)
    assert (await impl.source.key()).reveal() == first
    impl.rotate(second)
    clock.advance(TTL - 1)
    assert (await impl.source.key()).reveal() == first
    clock.advance(2)
    assert (await impl.source.key()).reveal() == second


async def test_absent_key_is_unavailable(impl: Source) -> None:
    """A source that cannot deliver raises Unavailable (503), naming no key."""
    with pytest.raises(Unavailable) as caught:
        await impl.absent.key()
    assert caught.value.status == 503
    assert caught.value.reason in {"key_unavailable", "vault_error"}
