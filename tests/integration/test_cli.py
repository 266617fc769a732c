"""The `broker` command as a real process: dev trust domain, serve, errors without tracebacks."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
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
    args = ["dev", "--dir", "d", "--port", str(port), "--gateway-port", str(free_port())]
    with broker_process(args, cwd=tmp_path) as proc:
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


def test_policy_check(tmp_path: Path) -> None:
    """`broker policy check`: 0 and a summary when valid; one clear line and non-zero when not."""
    assert run_broker("dev", "init", "--dir", "d", cwd=tmp_path).returncode == 0
    ok = run_broker("policy", "check", "d/policy.yaml", "--config", "d/config.yaml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "policy dev version 1+sha256:" in ok.stdout
    (tmp_path / "bad.yaml").write_text(
        "id: p\nversion: 1\nrules:\n  - id: r\n    agents: [nope]\n    tools: [x]\n"
    )
    bad = run_broker("policy", "check", "bad.yaml", cwd=tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "bad.yaml: rules[0].agents[0]:" in lines[0]
    (tmp_path / "unknown.yaml").write_text(
        "id: p\nversion: 1\nrules:\n  - id: r\n    agents: [spiffe://example.org/a]\n"
        "    tools: [x]\n"
    )
    assert run_broker("policy", "check", "unknown.yaml", cwd=tmp_path).returncode == 0
    unknown_tool = run_broker(
        "policy", "check", "unknown.yaml", "--config", "d/config.yaml", cwd=tmp_path
    )
    assert unknown_tool.returncode == 2
    assert "names tool 'x', which the configuration does not define" in unknown_tool.stderr


def test_keys_rotate_adds_a_scheduled_successor(tmp_path: Path) -> None:
    """`broker keys rotate` adds a key published ahead of activation, file kept 0600."""
    first = run_broker(
        "keys", "rotate", "--file", "keys.json", "--publish-ahead", "0", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    second = run_broker(
        "keys", "rotate", "--file", "keys.json", "--publish-ahead", "600", cwd=tmp_path
    )
    assert "signing from +600 s" in second.stdout
    keys = json.loads((tmp_path / "keys.json").read_text())["keys"]
    assert len(keys) == 2
    assert keys[1]["not_before"] - keys[0]["not_before"] >= 600
    assert oct((tmp_path / "keys.json").stat().st_mode & 0o777) == "0o600"


def test_sighup_reloads_the_policy_and_a_bad_file_is_kept_out(tmp_path: Path) -> None:
    """SIGHUP: a valid new policy runs at once; an invalid one keeps the running policy."""
    assert run_broker("dev", "init", "--dir", "d", cwd=tmp_path).returncode == 0
    config = tmp_path / "d" / "config.yaml"
    data = yaml.safe_load(config.read_text())
    port = free_port()
    data["listen"]["port"] = port
    data["policy"]["watch_seconds"] = 3600  # only the signal may reload
    config.write_text(yaml.safe_dump(data))
    bundle = tmp_path / "d" / "ca" / "bundle.pem"
    url = f"https://127.0.0.1:{port}"

    def policy_info() -> str:
        ctx = ssl.create_default_context(cafile=bundle)
        with urllib.request.urlopen(f"{url}/metrics", context=ctx, timeout=5) as resp:  # noqa: S310
            return next(
                x for x in resp.read().decode().splitlines() if x.startswith("broker_policy_info")
            )

    with broker_process(["serve", "--config", str(config)], cwd=tmp_path) as proc:
        proc.wait_ready(url, bundle)
        assert 'version="1+sha256:' in policy_info()
        policy = tmp_path / "d" / "policy.yaml"
        policy.write_text(policy.read_text().replace("version: 1", "version: 2"))
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while 'version="2+sha256:' not in policy_info():
            assert time.monotonic() < deadline, "policy not reloaded on SIGHUP"
            time.sleep(0.1)
        policy.write_text("rules: [broken")
        proc.proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert 'version="2+sha256:' in policy_info()
    assert "policy reload rejected" in proc.stderr


def test_broker_dev_gateway_command_calls_the_demo_upstream(tmp_path: Path) -> None:
    """`broker dev` prints a command that calls its demo upstream through the gateway, as is."""
    if not shutil.which("curl") or not shutil.which("bash"):
        pytest.skip("curl and bash run the printed command")
    port, gateway_port = free_port(), free_port()
    args = ["dev", "--dir", "d", "--port", str(port), "--gateway-port", str(gateway_port)]
    with broker_process(args, cwd=tmp_path) as proc:
        proc.wait_ready(f"https://127.0.0.1:{port}", tmp_path / "d" / "ca" / "bundle.pem")
        commands = [
            line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("TOKEN=")
        ]
        assert len(commands) == 1, proc.stdout
        assert f"https://127.0.0.1:{gateway_port}/demo/" in commands[0]
        out = subprocess.run(
            ["bash", "-c", commands[0]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert "demo upstream" in answer["choices"][0]["message"]["content"]
        key = (tmp_path / "d" / "gateway" / "upstream.key").read_text().strip()
        assert key not in proc.stdout
        assert key not in out.stdout
        assert key not in commands[0]
    records = [json.loads(line) for line in (tmp_path / "d" / "audit.log").read_text().splitlines()]
    assert [r["gateway"]["status"] for r in records if r["event"] == "gateway.request"] == [200]
