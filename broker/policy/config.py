"""The `policy:` section: where the policy comes from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.config.reader import Reader

__all__ = ["PolicySettings", "parse_policy"]

DEFAULT_WATCH_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Where the policy comes from and how often its file is checked for changes."""

    file: Path
    watch_seconds: float = DEFAULT_WATCH_SECONDS


def parse_policy(reader: Reader) -> PolicySettings:
    """Parse the `policy:` section.

    Raises:
        ConfigError: Naming the file and the key.
    """
    policy = PolicySettings(
        file=reader.path("file"),
        watch_seconds=reader.number(
            "watch_seconds", DEFAULT_WATCH_SECONDS, minimum=0.1, maximum=3600
        ),
    )
    reader.finish()
    return policy
