"""Operational logging: structlog, JSON lines on stderr, request id bound per request.

Operational logs are not the audit trail. Like it, they never hold secrets: a last
processor redacts values under key names that could carry one, as a safety net behind
the rule that code never logs them in the first place.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["REDACTED_KEYS", "configure_logging"]

REDACTED_KEYS = frozenset(
    {
        "authorization",
        "client_token",
        "data",
        "key",
        "password",
        "private_key",
        "secret",
        "secret_id",
        "subject_token",
        "actor_token",
        "token",
        "user_token",
        "wrap_token",
    }
)


def _redact(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for name in event.keys() & REDACTED_KEYS:
        event[name] = "[redacted]"
    return event


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library's logging to JSON lines.

    structlog renders through the standard library so that both share one handler, one
    format and the bound request id.

    Args:
        level: Minimum level (debug, info, warning, error).
        stream: Where to write (default stderr).
    """
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # structlog's fast path: a call below the level is a no-op, before any processor.
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiohttp's access log repeats what the request log line says.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientGone) for f in server.filters):
        server.addFilter(_ClientGone())


class _ClientGone(logging.Filter):
    """A client that closed its connection mid-request is not an error of the broker.

    aiohttp logs it at ERROR with a stack trace ("Error handling request"); the request's
    own outcome is already recorded (the gateway's `gateway.request`, the API's request
    line). It becomes one DEBUG line without the trace.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, ConnectionError):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "client closed the connection mid-request", None
        record.exc_info, record.exc_text = None, None
        return logging.getLogger().isEnabledFor(logging.DEBUG)
