"""The README's broker-hook recipe, run as written against `broker dev`; dev helpers' defaults."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import jwt

from tests.support import leaks
from tests.support.broker import REPO, broker_process, free_port

RECIPE = re.compile(
    r"<!-- broker-hook-recipe:start -->\s*```sh\n(?P<command>.*?)```\s*"
    r"<!-- broker-hook-recipe:end -->",
    re.DOTALL,
)


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "SPIFFE_ENDPOINT_SOCKET"}
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False, env=environ
    )


def broker_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "broker", *args], cwd)


def test_dev_user_token_and_jwt_svid_default_to_broker_dev(tmp_path: Path) -> None:
    """`broker dev user-token` and `broker dev jwt-svid` use .broker-dev without --dir."""
    assert broker_cli("dev", "init", cwd=tmp_path).returncode == 0
    token = broker_cli("dev", "user-token", "--user", "alice", cwd=tmp_path)
    assert token.returncode == 0, token.stderr
    leaks.remember(token.stdout.strip())
    assert jwt.decode(token.stdout.strip(), options={"verify_signature": False})["sub"] == "alice"
    svid = broker_cli("dev", "jwt-svid", "--agent", "analytics", cwd=tmp_path)
    assert svid.returncode == 0, svid.stderr
    leaks.remember(svid.stdout.strip())
    claims = jwt.decode(svid.stdout.strip(), options={"verify_signature": False})
    assert claims["sub"] == "spiffe://example.org/agent/analytics"


def readme_recipe() -> str:
    match = RECIPE.search((REPO / "README.md").read_text())
    assert match, "the README has no broker-hook recipe between its markers"
    return match["command"]


def test_readme_recipe_runs_as_written_against_broker_dev(tmp_path: Path) -> None:
    """The README's command, with only the port changed, gets a credential from `broker dev`."""
    command = readme_recipe()
    assert "https://127.0.0.1:8443" in command
    port = free_port()
    argv = shlex.split(command.replace("\\\n", " ").replace(":8443", f":{port}"))
    assert argv[0] == ".venv/bin/broker-hook"
    script = Path(sys.executable).parent / "broker-hook"
    argv[0] = str(script) if script.exists() else sys.executable
    if not script.exists():
        argv[1:1] = ["-m", "broker.hook"]
    out = tmp_path / argv[argv.index("--out") + 1]
    # `broker dev` also serves its gateway (on port + 1 by default): give it a free port.
    dev = ["dev", "--port", str(port), "--gateway-port", str(free_port())]
    with broker_process(dev, cwd=tmp_path) as broker:
        broker.wait_ready(
            f"https://127.0.0.1:{port}", tmp_path / ".broker-dev" / "ca" / "bundle.pem"
        )
        result = run(argv, tmp_path)
    (tmp_path / "hook.log").write_text(result.stdout + result.stderr)
    leaks.watch_log(tmp_path / "hook.log")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "analytics_api.json").read_text())
    leaks.remember(document["token"])
    assert stat.S_IMODE((out / "analytics_api.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    claims = jwt.decode(document["token"], options={"verify_signature": False})
    assert claims["sub"] == "spiffe://example.org/agent/analytics"
    assert claims["aud"] == "https://analytics.example.org"
    env_file = (out / "credentials.env").read_text()
    assert f"BROKER_CREDENTIAL_ANALYTICS_API={document['token']}" in env_file
    assert document["token"] not in result.stdout + result.stderr
