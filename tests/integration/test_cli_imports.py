"""A backend's client library loads only in a broker that is configured to use it.

`redis` (with what it pulls in), `hvac` (with `requests`) and aiohttp cost the `broker`
command most of a second and ~15 MB before it did anything: every CLI call, every worker,
every test process paid for them. Each is imported where its backend is built.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Printed by each script below: which of these a fresh interpreter has loaded.
_LOADED = """
print(json.dumps([m for m in ("redis", "hvac", "requests", "aiohttp") if m in sys.modules]))
"""


def _loaded_by(script: str, *argv: str, cwd: Path) -> list[str]:
    """Run `script` in a fresh interpreter; the heavy modules it left loaded."""
    result = subprocess.run(
        [sys.executable, "-c", "import json, sys\n" + script + _LOADED, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


# What the `broker` console script does, exit code checked.
_CLI = """
from broker.cli.main import main
assert main(sys.argv[1:]) == 0
"""


def test_cli_commands_on_the_embedded_store_load_no_backend_client(tmp_path: Path) -> None:
    """`dev init`, `dev user-token`, `agents list` (policy and SQLite store): none of them."""
    assert _loaded_by(_CLI, "dev", "init", "--dir", "td", cwd=tmp_path) == []
    user_token = ("dev", "user-token", "--dir", "td", "--user", "alice")
    assert _loaded_by(_CLI, *user_token, cwd=tmp_path) == []
    assert _loaded_by(_CLI, "agents", "list", "--config", "td/config.yaml", cwd=tmp_path) == []


def test_serve_imports_no_backend_client_it_is_not_configured_for(tmp_path: Path) -> None:
    """What `broker serve` imports (server, gateway, workers): aiohttp, but not Redis or hvac."""
    serve = "import broker.cli.main, broker.runtime, broker.web.server, broker.workers\n"
    assert _loaded_by(serve, cwd=tmp_path) == ["aiohttp"]


def test_the_redis_client_still_loads_when_that_store_is_built(tmp_path: Path) -> None:
    """The probe sees a lazily imported module: building the Redis store loads `redis`."""
    build = """
from broker.clock import SystemClock
from broker.state import STATE_STORES
from broker.state.redis.config import RedisSettings
assert "redis" not in sys.modules
STATE_STORES.get("redis").build(RedisSettings(url="redis://127.0.0.1:1"), SystemClock())
"""
    assert "redis" in _loaded_by(build, cwd=tmp_path)
