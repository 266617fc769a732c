"""Every policy version's content, kept beside the audit log and addressed by its hash.

`<audit dir>/policies/sha256-<hex>.<suffix>` (`yaml` for the rule engine, `rego` for a
Rego module, `json` for a Rego bundle; directory 0700, files 0600), written once per
content: together with the `policy.loaded` audit records (id, version, hash, when), it
lets `broker audit explain` replay the policy in force at any past moment.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["PolicyArchive", "archive_dir_for"]

_PREFIX = "sha256-"


def archive_dir_for(audit_path: Path) -> Path:
    """The archive directory beside an audit log."""
    return audit_path.parent / "policies"


class PolicyArchive:
    """A directory of policy files named by the SHA-256 of their content."""

    def __init__(self, directory: Path) -> None:
        """Use `directory` (created on the first write)."""
        self.directory = directory

    def path_of(self, content_hash: str, suffix: str = "yaml") -> Path:
        """Where the version with this hex SHA-256 is (or would be) kept."""
        return self.directory / f"{_PREFIX}{content_hash}.{suffix}"

    def keep(self, raw: bytes, suffix: str = "yaml") -> Path:
        """Store `raw` under its hash (idempotent); returns its path.

        Raises:
            OSError: It could not be written.
        """
        digest = hashlib.sha256(raw).hexdigest()
        target = self.path_of(digest, suffix)
        if target.is_file():
            return target
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = target.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(target)
        return target

    def read(self, content_hash: str, suffix: str = "yaml") -> bytes:
        """The content of a stored version.

        Raises:
            FileNotFoundError: The version was never kept here, or its content was changed.
        """
        path = self.path_of(content_hash, suffix)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != content_hash:
            raise FileNotFoundError(f"{path}: content does not match its hash")
        return data
