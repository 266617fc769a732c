"""The event loop the server runs on: uvloop when installed (the `uvloop` extra), else asyncio.

uvloop's loop and TLS transport are implemented in Cython on libuv; the broker's hot path
is one event loop's CPU, so the loop's own cost per request counts (bench/README.md
measures both in one run). `BROKER_EVENT_LOOP=asyncio` forces the standard loop (to
compare, or to rule the loop out when debugging); `uvloop` requires it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from broker.errors import ConfigError

__all__ = ["ENV", "loop_name", "run"]

ENV = "BROKER_EVENT_LOOP"
T = TypeVar("T")


def loop_name() -> str:
    """`uvloop` or `asyncio`: what `run` will use.

    Raises:
        ConfigError: `BROKER_EVENT_LOOP` names something else, or `uvloop` is not installed.
    """
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in {"auto", "asyncio", "uvloop"}:
        raise ConfigError(f"{ENV} must be auto, asyncio or uvloop, not {wanted!r}")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401, PLC0415 - optional
    except ImportError:
        if wanted == "uvloop":
            raise ConfigError(
                f"{ENV}=uvloop, but uvloop is not installed (the uvloop extra)"
            ) from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Run `main` to completion on `loop` (from `loop_name`, called before `main` was made)."""
    if loop == "uvloop":
        import uvloop  # noqa: PLC0415 - optional

        return uvloop.run(main)
    return asyncio.run(main)
