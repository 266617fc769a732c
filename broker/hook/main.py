"""`broker-hook`: the agent pod's init container or sidecar.

    broker-hook --broker-url https://credential-broker:8443 --tools crm,tickets \
        --out /run/credentials [--mode sidecar]

It gets the pod's SVID from the SPIFFE Workload API (SPIFFE_ENDPOINT_SOCKET) or from files
(`--svid-dir`, the spiffe-helper layout), asks the broker for credentials, and writes them
atomically (mode 0600, directory 0700) in the formats of `--format`: `<out>/<tool>.json`
(the credential object plus its `decision_id`), an env file, one JSON file, a template. In
`sidecar` mode it keeps them fresh (a new credential at half-life), removes revoked ones,
signals or runs a command after each change, reports health, and revokes what it holds
when the pod stops. It never prints a secret: logs name tools, expiries and decision ids.

Every option can also be set by an environment variable (see `broker-hook --help`).

Exit codes:
    0  credentials written (init), or clean shutdown (sidecar)
    2  usage or configuration error (including an unusable --template or --health-port)
    3  no SVID (from the Workload API or the files)
    4  broker unreachable, not the expected SPIFFE ID, or failing (5xx) until --timeout
    5  refused by the broker (400, 401, 403): retrying would not help; in sidecar mode the
       credentials held are removed from the outputs first
    6  rate limited (429) until --timeout
    7  the output directory (or the health file) cannot be written
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence

import structlog

from broker.hook.backoff import Backoff
from broker.hook.client import BrokerClient, default_broker_id
from broker.hook.errors import HookError
from broker.hook.health import Health, HealthServer
from broker.hook.hook import Hook, HookConfig
from broker.hook.identity import FileIdentity, WorkloadIdentity
from broker.hook.notify import Notifier
from broker.hook.outputs import EnvFile, JsonFile, Outputs, TemplateFile, ToolFiles
from broker.hook.settings import HookSettings, parse_settings
from broker.hook.typing import Identity, Output
from broker.logging import configure_logging

__all__ = ["main"]

log = structlog.get_logger("broker.hook")

REQUEST_TIMEOUT = 10.0
WORKLOAD_API_TIMEOUT = 30.0


def build_outputs(settings: HookSettings) -> Outputs:
    """The outputs of `--format`, all in `--out`.

    Raises:
        HookError: An unusable template (exit 2).
    """
    out = settings.out
    outputs: list[Output] = []
    for name in settings.formats:
        if name == "files":
            outputs.append(ToolFiles(out, settings.tools))
        elif name == "env":
            outputs.append(EnvFile(out / settings.env_file))
        elif name == "json":
            outputs.append(JsonFile(out / settings.json_file))
        elif settings.template is not None and settings.template_out is not None:
            outputs.append(
                TemplateFile.load(settings.template, out / settings.template_out, settings.tools)
            )
    return Outputs(out, outputs)


def open_identity(settings: HookSettings) -> Identity:
    """SVID files when configured, else the Workload API.

    Raises:
        HookError: No SVID (exit 3).
    """
    if settings.svid_files is not None:
        return FileIdentity(settings.svid_files)
    return WorkloadIdentity(settings.socket, timeout=min(settings.timeout, WORKLOAD_API_TIMEOUT))


def run(settings: HookSettings, stop: threading.Event) -> int:
    """Wire the hook from its settings and run it.

    Raises:
        HookError: With the exit code of the failure.
    """
    outputs = build_outputs(settings)
    health = Health(
        settings.tools, stale_seconds=settings.health_stale_seconds, file=settings.health_file
    )
    server = (
        HealthServer(health, settings.health_port) if settings.health_port is not None else None
    )
    identity: Identity | None = None
    try:
        if server is not None:
            server.start()
            log.info("health endpoint listening", url=f"http://127.0.0.1:{server.port}/healthz")
        identity = open_identity(settings)
        client = BrokerClient(
            settings.broker_url,
            settings.broker_id or default_broker_id(identity.spiffe_id),
            identity,
            auth=settings.auth,
            timeout=REQUEST_TIMEOUT,
        )
        hook = Hook(
            HookConfig(
                tools=settings.tools,
                sidecar=settings.sidecar,
                ttl=settings.ttl,
                reason=settings.reason,
                user_token_file=settings.user_token_file,
                timeout=settings.timeout,
                check_interval=settings.check_interval,
                revoke_on_exit=settings.revoke_on_exit,
            ),
            client,
            outputs,
            health=health,
            notifier=Notifier(
                target=settings.signal,
                command=settings.on_refresh_exec,
                timeout=settings.on_refresh_timeout,
            ),
            backoff=Backoff(settings.backoff_initial, settings.backoff_max),
            stop=stop,
        )
        return hook.run()
    finally:
        if identity is not None:
            identity.close()
        if server is not None:
            server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run `broker-hook`; returns the exit code."""
    try:
        settings = parse_settings(argv)
    except HookError as exc:
        print(f"broker-hook: {exc}", file=sys.stderr)  # noqa: T201
        return exc.code
    configure_logging(settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        return run(settings, stop)
    except HookError as exc:
        log.error("broker-hook failed", exit_code=exc.code, reason=str(exc))  # noqa: TRY400
        return exc.code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
