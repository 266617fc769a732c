"""The `broker` command as a real process: dev trust domain, serve, errors without tracebacks."""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.broker import BrokerProcess, broker_process, free_port


def run_broker(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_garbage_config_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    """`broker serve --config garbage.yaml`: non-zero exit, one line on stderr, no traceback."""
    (tmp_path / "garbage.yaml").write_text("garbage: [unclosed\n\tnot: yaml")
    result = run_broker("serve", "--config", "garbage.yaml", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "garbage.yaml" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_missing_identity_files_exit_one_with_one_line(tmp_path: Path) -> None:
    """A valid configuration whose SVID files are missing fails start-up in one line."""
    assert run_broker("dev", "init", "--dir", "d", cwd=tmp_path).returncode == 0
    (tmp_path / "d" / "broker" / "svid.pem").unlink()
    result = run_broker("serve", "--config", "d/config.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("broker: identity unavailable:")
    assert "Traceback" not in result.stderr


def test_dev_init_creates_and_serves_nothing(tmp_path: Path) -> None:
    """`broker dev init` writes the trust domain and exits."""
    result = run_broker("dev", "init", "--dir", "td", "--trust-domain", "acme.test", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "acme.test" in result.stdout
    assert (tmp_path / "td" / "agents" / "claims" / "svid.pem").is_file()


def test_dev_user_token_prints_one_line(tmp_path: Path) -> None:
    """`broker dev user-token` prints the token alone on one line."""
    run_broker("dev", "init", "--dir", "d", cwd=tmp_path)
    result = run_broker(
        "dev",
        "user-token",
        "--dir",
        "d",
        "--user",
        "alice",
        "--tier",
        "gold",
        "--ttl",
        "60",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.strip().count(".") == 2
    bad = run_broker(
        "dev", "user-token", "--dir", "d", "--user", "alice", "--ttl", "0", cwd=tmp_path
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _whoami(url: str, root: Path, agent: str) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=root / "ca" / "bundle.pem")
    ctx.load_cert_chain(root / "agents" / agent / "svid.pem", root / "agents" / agent / "key.pem")
    with urllib.request.urlopen(f"{url}/v1/whoami", context=ctx, timeout=5) as resp:  # noqa: S310
        return json.loads(resp.read())  # type: ignore[no-any-return]


def test_broker_dev_serves_mtls_and_prints_a_working_command(tmp_path: Path) -> None:
    """`broker dev` serves with mTLS and prints a curl that gets a credential, as printed."""
    port = free_port()
    with broker_process(["dev", "--dir", "d", "--port", str(port)], cwd=tmp_path) as proc:
        url = f"https://127.0.0.1:{port}"
        proc.wait_ready(url, tmp_path / "d" / "ca" / "bundle.pem")
        body = _whoami(url, tmp_path / "d", "claims")
        assert body["spiffe_id"] == "spiffe://example.org/agent/claims"

        commands = [
            line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("curl ")
        ]
        assert len(commands) == 1, proc.stdout
        if shutil.which("curl"):
            out = subprocess.run(
                [*shlex.split(commands[0]), "--silent", "--show-error"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert out.returncode == 0, out.stderr
            issued = json.loads(out.stdout)
            assert issued["expires_in"] == 300
            [credential] = issued["credentials"]
            assert credential["tool"] == "customer_data_api"
            assert credential["type"] == "jwt"
            assert credential["token"].count(".") == 2
    assert proc.proc is not None
    assert proc.proc.returncode == 0  # SIGTERM is a clean shutdown


def test_generated_config_runs_as_is_with_broker_serve(tmp_path: Path) -> None:
    """`broker serve --config D/config.yaml` runs the generated trust domain unchanged."""
    assert run_broker("dev", "init", "--dir", "d", cwd=tmp_path).returncode == 0
    config = tmp_path / "d" / "config.yaml"
    port = 8443
    if not _port_free(port):  # someone runs `make run` here: same file, another port
        port = free_port()
        data = yaml.safe_load(config.read_text())
        data["listen"]["port"] = port
        config.write_text(yaml.safe_dump(data))
    proc = BrokerProcess(["serve", "--config", str(config)], cwd=tmp_path).start()
    try:
        url = f"https://127.0.0.1:{port}"
        proc.wait_ready(url, tmp_path / "d" / "ca" / "bundle.pem")
        assert _whoami(url, tmp_path / "d", "analytics")["spiffe_id"] == (
            "spiffe://example.org/agent/analytics"
        )
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("args", [["--help"], ["dev", "--help"], ["--version"]])
def test_help_and_version(tmp_path: Path, args: list[str]) -> None:
    """Help and version exit 0."""
    assert run_broker(*args, cwd=tmp_path).returncode == 0
