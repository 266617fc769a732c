"""The event loop the server runs on: asyncio, or uvloop on request (the `uvloop` extra).

uvloop's loop and TLS transport are implemented in Cython on libuv. In seven `make bench`
runs issuance moved by 0 %, +11 %, -11 %, +43 %, +6 %, +12 % and -2 % on it (README,
Dependencies):
within this machine's run-to-run noise, the broker's own Python work dominating. So the
standard loop stays the default and uvloop is an option that is tested to work:
`BROKER_EVENT_LOOP=uvloop` requires it, `auto` takes it when installed, `asyncio` (the
default) is the standard loop.
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
    wanted = os.environ.get(ENV, "asyncio").strip().lower() or "asyncio"
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
