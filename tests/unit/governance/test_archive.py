"""Policy versions kept beside the audit log, addressed by their hash."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from broker.governance.archive import PolicyArchive, archive_dir_for


def test_versions_are_stored_by_hash_with_mode_0600(tmp_path: Path) -> None:
    """keep() writes policies/sha256-<hex>.yaml (0600, directory 0700) and read() returns it."""
    archive = PolicyArchive(archive_dir_for(tmp_path / "audit.log"))
    raw = b"id: p\nversion: 1\n"
    digest = hashlib.sha256(raw).hexdigest()
    path = archive.keep(raw)
    assert path == tmp_path / "policies" / f"sha256-{digest}.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert archive.keep(raw) == path
    assert archive.read(digest) == raw


def test_a_tampered_version_is_not_returned(tmp_path: Path) -> None:
    """read() refuses content that no longer matches its name."""
    archive = PolicyArchive(tmp_path)
    raw = b"id: p\nversion: 1\n"
    path = archive.keep(raw)
    path.write_bytes(b"id: p\nversion: 2\n")
    with pytest.raises(FileNotFoundError):
        archive.read(hashlib.sha256(raw).hexdigest())
