"""The `audit:` section: where the trail goes and how hard it insists on durability."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from broker.config.reader import Reader

__all__ = ["AuditSettings", "parse_audit"]

DEFAULT_PATH = "audit.log"
DEFAULT_WRITE_TIMEOUT_MS = 2000
DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
DEFAULT_CHECKPOINT_EVERY = 1000


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """The audit trail: where it goes and how hard it insists on durability."""

    sink: Literal["file", "stdout"] = "file"
    path: Path | None = None
    chain_id: str | None = None
    fsync: bool = True
    write_timeout_ms: int = DEFAULT_WRITE_TIMEOUT_MS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    hmac_key_file: Path | None = None
    checkpoint_key_file: Path | None = None
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY


def parse_audit(reader: Reader) -> AuditSettings:
    """Parse the `audit:` section.

    Raises:
        ConfigError: Naming the file and the key.
    """
    sink = reader.string("sink", "file", choices=("file", "stdout"))
    audit = AuditSettings(
        sink=sink,  # type: ignore[arg-type]
        path=reader.path("path", DEFAULT_PATH) if sink == "file" else reader.optional_path("path"),
        chain_id=reader.optional_string("chain_id"),
        fsync=reader.boolean("fsync", True),  # noqa: FBT003
        write_timeout_ms=reader.integer(
            "write_timeout_ms", DEFAULT_WRITE_TIMEOUT_MS, minimum=10, maximum=60000
        ),
        max_file_bytes=reader.integer(
            "max_file_bytes", DEFAULT_MAX_FILE_BYTES, minimum=4096, maximum=1 << 40
        ),
        hmac_key_file=reader.optional_path("hmac_key_file"),
        checkpoint_key_file=reader.optional_path("checkpoint_key_file"),
        checkpoint_every=reader.integer(
            "checkpoint_every", DEFAULT_CHECKPOINT_EVERY, minimum=1, maximum=1_000_000
        ),
    )
    reader.finish()
    return audit
