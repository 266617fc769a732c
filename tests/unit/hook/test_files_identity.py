"""SVID files (spiffe-helper layout): loaded, checked, reloaded on rotation, kept when torn."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from broker.hook.errors import HookError
from broker.hook.identity import FileIdentity, SvidFiles
from tests.support.pki import Svid, TrustDomain


def write_helper_layout(directory: Path, svid: Svid, td: TrustDomain) -> SvidFiles:
    """What spiffe-helper writes: svid.pem, svid_key.pem, svid_bundle.pem."""
    svid.write(directory, "svid.pem", "svid_key.pem")
    (directory / "svid_bundle.pem").write_bytes(td.bundle_pem())
    return SvidFiles.locate(directory)


def test_spiffe_helper_layout(tmp_path: Path) -> None:
    """The three files give the SPIFFE ID and a client context presenting the SVID."""
    td = TrustDomain("example.org", intermediate=True)
    files = write_helper_layout(tmp_path, td.svid("/agent/a"), td)
    identity = FileIdentity(files)
    assert identity.spiffe_id == "spiffe://example.org/agent/a"
    ctx = identity.tls_context(present_svid=True)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert identity.tls_context(present_svid=False).check_hostname is False


def test_rotation_is_picked_up(tmp_path: Path) -> None:
    """New files (a new SPIFFE ID here) are used from the next request, and logged."""
    td = TrustDomain("example.org")
    files = write_helper_layout(tmp_path, td.svid("/agent/a"), td)
    identity = FileIdentity(files)
    td.svid("/agent/b").write(tmp_path, "svid.pem", "svid_key.pem")
    with structlog.testing.capture_logs() as logs:
        assert identity.spiffe_id == "spiffe://example.org/agent/b"
    assert [e["event"] for e in logs] == ["SVID reloaded from files"]


def test_torn_rotation_keeps_the_previous_svid(tmp_path: Path) -> None:
    """Certificate rotated but key not yet: the previous SVID stays until the pair matches."""
    td = TrustDomain("example.org")
    files = write_helper_layout(tmp_path, td.svid("/agent/a"), td)
    identity = FileIdentity(files)
    new = td.svid("/agent/b")
    (tmp_path / "svid.pem").write_bytes(new.chain_pem())
    with structlog.testing.capture_logs() as logs:
        assert identity.spiffe_id == "spiffe://example.org/agent/a"
    assert "does not match" in logs[0]["reason"]
    (tmp_path / "svid_key.pem").write_bytes(new.key_pem())
    assert identity.spiffe_id == "spiffe://example.org/agent/b"


@pytest.mark.parametrize("broken", ["missing", "garbage", "mismatch", "not-spiffe", "expired"])
def test_unusable_files_at_start_are_exit_3(tmp_path: Path, broken: str) -> None:
    """Missing, invalid, mismatched, non-SPIFFE or expired SVID files: exit 3, no secret shown."""
    td = TrustDomain("example.org")
    svid = td.svid("/agent/a")
    if broken == "not-spiffe":
        svid = td.svid(uris=["https://example.org/a"])
    if broken == "expired":
        past = datetime.now(UTC) - timedelta(hours=1)
        svid = td.svid(not_before=past - timedelta(hours=1), not_after=past)
    files = write_helper_layout(tmp_path, svid, td)
    if broken == "missing":
        files.bundle.unlink()
    if broken == "garbage":
        files.key.write_text("not a key")
    if broken == "mismatch":
        files.key.write_bytes(td.svid().key_pem())
    with pytest.raises(HookError) as caught:
        FileIdentity(files)
    assert caught.value.code == 3
    assert "PRIVATE KEY" not in str(caught.value)


def test_jwt_svid_file(tmp_path: Path) -> None:
    """The JWT-SVID file is used when its audience is the broker; else exit 3."""
    td = TrustDomain("example.org")
    files = write_helper_layout(tmp_path, td.svid("/agent/a"), td)
    token = td.jwt_svid("/agent/a", audience=["spiffe://example.org/broker"])
    (tmp_path / "jwt").write_text(token + "\n")
    identity = FileIdentity(SvidFiles(files.svid, files.key, files.bundle, tmp_path / "jwt"))
    assert identity.jwt_svid("spiffe://example.org/broker") == token
    with pytest.raises(HookError) as caught:
        identity.jwt_svid("spiffe://example.org/other")
    assert caught.value.code == 3
    assert token not in str(caught.value)
    with pytest.raises(HookError):
        FileIdentity(files).jwt_svid("spiffe://example.org/broker")
