"""Atomic, permission-safe file writes (one place for it)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["SECRET_MODE", "ensure_private_dir", "write_atomic"]

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def ensure_private_dir(path: Path) -> Path:
    """Create a directory readable by its owner only (or tighten an existing one)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_atomic(path: Path, data: bytes, *, mode: int = SECRET_MODE) -> None:
    """Write a file so readers see the old or the new content, never a mix.

    The temporary file is created with `mode` from the start (a secret is never readable
    by others, not even briefly), fsynced, then renamed over the target; the directory is
    fsynced so the rename survives a crash.

    Args:
        path: The target file.
        data: The content.
        mode: Permission bits (default 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
