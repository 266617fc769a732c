"""Loading a large policy in a child process, so that parsing it leaves no footprint here.

Parsing YAML builds a node tree and dictionaries many times the size of the file (a
3 MB policy of 10,000 agents peaks at about 120 MB). In the broker's process that memory
is never given back: the rules built meanwhile keep the allocator's arenas partly in use.
A policy over `ISOLATE_BYTES` is therefore parsed and validated in a short-lived child
process (spawned: safe beside the broker's threads), and only the finished `Policy` comes
back, allocated compactly. Small policies load in-process.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from broker.errors import ConfigError
from broker.policy.loader import load_policy
from broker.policy.model import Policy

__all__ = ["ISOLATE_BYTES", "load_policy_file"]

ISOLATE_BYTES = 256 * 1024


def load_policy_file(path: Path, *, known_tools: frozenset[str] | None = None) -> Policy:
    """Load and validate a policy file; a large one in a child process.

    Raises:
        ConfigError: Naming the file and the offending key.
    """
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # `load_policy` reports the problem with the file
    if size <= ISOLATE_BYTES:
        return load_policy(path, known_tools=known_tools)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(load_policy, path, known_tools=known_tools).result()
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - the child died: say so, in one line
            raise ConfigError(f"{path}: the policy could not be loaded ({exc})") from None
