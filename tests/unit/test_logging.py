"""Operational logs: a client closing its connection is not logged as the broker's error."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from broker.logging import configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging("info", stream=out)
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def _log(error: BaseException) -> None:
    try:
        raise error
    except type(error):
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "x")


def test_a_client_gone_mid_request_leaves_no_error_and_no_trace(stream: io.StringIO) -> None:
    _log(ConnectionResetError("Connection lost"))
    assert lines(stream) == []  # one DEBUG line, below the INFO level here


def test_other_server_errors_keep_their_level_and_trace(stream: io.StringIO) -> None:
    _log(ValueError("something else"))
    (record,) = lines(stream)
    assert record["level"] == "error"
    assert "ValueError" in str(record["exception"])
