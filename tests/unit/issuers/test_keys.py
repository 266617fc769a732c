"""The issuer's signing keys: activation, publication, retention after rotation, auto-rotation."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest

from broker.errors import ConfigError
from broker.issuers.jwt.config import JwtIssuerSettings
from broker.issuers.jwt.keys import KeyRing, add_key
from tests.support.clock import ManualClock

LEEWAY = 60


@pytest.fixture
def clock() -> ManualClock:
    """A clock on a whole second (key times are stored in whole seconds)."""
    return ManualClock(datetime.fromtimestamp(1_800_000_000, UTC))


def ring(path: Path, clock: ManualClock, **options: object) -> KeyRing:
    settings = JwtIssuerSettings(
        issuer="https://broker.test", keys_file=path, leeway_seconds=LEEWAY, **options
    )  # type: ignore[arg-type]
    keys = KeyRing(settings, clock)
    keys.load()
    return keys


def test_first_load_creates_a_private_key_file(tmp_path: Path, clock: ManualClock) -> None:
    """With auto-rotation the key file is created (0600) with one active ES256 key (the default)."""
    path = tmp_path / "keys.json"
    keys = ring(path, clock)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [k.alg for k in keys.keys] == ["ES256"]
    jwks = keys.jwks()
    assert all("d" not in k for k in jwks["keys"])
    assert jwks["keys"][0]["kid"] == keys.signing_key().kid


def test_missing_file_without_auto_rotation_is_an_error(tmp_path: Path, clock: ManualClock) -> None:
    """Replicas sharing a Secret must not invent their own keys."""
    with pytest.raises(ConfigError, match="signing key file not found"):
        ring(tmp_path / "absent.json", clock, auto_rotate=False)


def test_rotation_publishes_ahead_and_keeps_the_old_key_for_ttl_plus_leeway(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A successor is published before it signs; its predecessor stays published 300 s + leeway."""
    path = tmp_path / "keys.json"
    add_key(path, "EdDSA", now=clock.time(), publish_ahead=0, leeway=LEEWAY)
    keys = ring(path, clock, auto_rotate=False)
    old = keys.signing_key()
    token = jwt.encode({"sub": "x"}, old.private_key, algorithm="EdDSA", headers={"kid": old.kid})

    new = add_key(path, "EdDSA", now=clock.time(), publish_ahead=600, leeway=LEEWAY)
    keys.maintain()
    assert {k["kid"] for k in keys.jwks()["keys"]} == {old.kid, new.kid}  # published ahead
    assert keys.signing_key().kid == old.kid  # but not signing yet

    clock.advance(600)
    assert keys.signing_key().kid == new.kid
    clock.advance(300 + LEEWAY)  # tokens signed by the old key may still be live up to here
    published = keys.verification_key(old.kid)
    assert published is not None
    jwt.decode(token, published.private_key.public_key(), algorithms=["EdDSA"])
    clock.advance(1)
    assert keys.verification_key(old.kid) is None
    assert [k["kid"] for k in keys.jwks()["keys"]] == [new.kid]


def test_auto_rotation_adds_a_successor_when_due_and_prunes(
    tmp_path: Path, clock: ManualClock
) -> None:
    """maintain() rotates after rotation_hours and prunes keys retired long enough."""
    path = tmp_path / "keys.json"
    keys = ring(path, clock, rotation_hours=1.0)
    first = keys.signing_key().kid
    keys.maintain()
    assert [k.kid for k in keys.keys] == [first]
    clock.advance(3600)
    keys.maintain()
    second = keys.signing_key().kid
    assert second != first
    clock.advance(3600)
    keys.maintain()
    kids = [k["kid"] for k in json.loads(path.read_text())["keys"]]
    assert first not in kids  # retired for over an hour: pruned from the file
    assert second in kids


def test_other_replicas_pick_up_a_rotated_file(tmp_path: Path, clock: ManualClock) -> None:
    """Two rings on one file: a rotation written by one is read by the other."""
    path = tmp_path / "keys.json"
    a = ring(path, clock, auto_rotate=True)
    b = ring(path, clock, auto_rotate=False)
    new = add_key(path, "EdDSA", now=clock.time(), publish_ahead=0, leeway=LEEWAY)
    clock.advance(1)
    b.maintain()
    assert b.signing_key().kid == new.kid
    a.maintain()
    assert a.signing_key().kid == new.kid


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not readable JSON"),
        ('{"keys": []}', "must be a non-empty list"),
        ('{"keys": [{"kid": "a"}]}', "malformed key entry"),
    ],
)
def test_invalid_key_files(tmp_path: Path, clock: ManualClock, content: str, message: str) -> None:
    """A broken key file is a clear configuration error."""
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        ring(path, clock)


def test_key_must_match_its_algorithm(tmp_path: Path, clock: ManualClock) -> None:
    """An ES256 entry holding an Ed25519 key is refused."""
    path = tmp_path / "keys.json"
    add_key(path, "EdDSA", now=clock.time(), publish_ahead=0, leeway=LEEWAY)
    document = json.loads(path.read_text())
    document["keys"][0]["alg"] = "ES256"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="does not match alg 'ES256'"):
        ring(path, clock)


def test_es256_keys(tmp_path: Path, clock: ManualClock) -> None:
    """ES256 is supported as the issuer algorithm."""
    keys = ring(tmp_path / "keys.json", clock, algorithm="ES256")
    assert keys.signing_key().alg == "ES256"
    assert keys.jwks()["keys"][0]["crv"] == "P-256"
