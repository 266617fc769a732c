"""A backend's client library loads only in a broker that is configured to use it.

`redis` (with what it pulls in), `hvac` (with `requests`) and aiohttp's server cost the
`broker` command most of a second and ~25 MB before it did anything: every CLI call, every
worker, every test process paid for them. Each is imported where its backend is built.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("redis", "hvac", "requests", "aiohttp")

# Runs in a fresh interpreter: what a CLI command imports, as the `broker` script would.
_PROBE = """
import json, sys
from broker.cli.main import main
heavy = sys.argv.pop()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": [m for m in heavy.split(",") if m in sys.modules]}))
"""


def _probe(*argv: str, cwd: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv, ",".join(HEAVY)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_cli_commands_on_the_embedded_store_load_no_backend_client(tmp_path: Path) -> None:
    """`dev init`, `dev user-token`, `agents list` (policy and SQLite store): none of them."""
    assert _probe("dev", "init", "--dir", "td", cwd=tmp_path) == {"code": 0, "loaded": []}
    token = _probe("dev", "user-token", "--dir", "td", "--user", "alice", cwd=tmp_path)
    assert token == {"code": 0, "loaded": []}
    listed = _probe("agents", "list", "--config", "td/config.yaml", cwd=tmp_path)
    assert listed == {"code": 0, "loaded": []}


def test_serve_imports_no_backend_client_it_is_not_configured_for(tmp_path: Path) -> None:
    """What `broker serve` imports (server, gateway, workers): aiohttp, but not Redis or hvac."""
    script = """
import json, sys
import broker.cli.main, broker.runtime, broker.web.server, broker.workers
print(json.dumps([m for m in ("redis", "hvac", "requests", "aiohttp") if m in sys.modules]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["aiohttp"]


def test_the_redis_client_still_loads_when_that_store_is_built(tmp_path: Path) -> None:
    """The probe sees a lazily imported module: building the Redis store loads `redis`."""
    script = """
import json, sys
from broker.clock import SystemClock
from broker.state import STATE_STORES
from broker.state.redis.config import RedisSettings
before = "redis" in sys.modules
STATE_STORES.get("redis").build(RedisSettings(url="redis://127.0.0.1:1"), SystemClock())
print(json.dumps([before, "redis" in sys.modules]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [False, True]
