"""`broker-hook`: the agent pod's init container or sidecar.

    broker-hook --broker-url https://credential-broker:8443 --tools crm,tickets \
        --out /run/credentials

It gets the pod's SVID from the SPIFFE Workload API (SPIFFE_ENDPOINT_SOCKET), asks the
broker for credentials, and writes each to `<out>/<tool>.json` atomically (mode 0600):
the credential object of the broker's response plus its `decision_id`. In `sidecar` mode
it keeps them fresh (a new credential at half-life) and revokes what it holds when the pod
stops. It never prints a secret: logs name tools, expiries and decision ids only.

Every option can also be set by an environment variable (in brackets).

Exit codes:
    0  credentials written (init), or clean shutdown (sidecar)
    2  usage or configuration error
    3  no SVID from the Workload API
    4  broker unreachable, not the expected SPIFFE ID, or failing (5xx) until --timeout
    5  refused by the broker (400, 401, 403): retrying would not help
    6  rate limited (429) until --timeout
    7  the output directory cannot be written
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from broker.fileio import ensure_private_dir, write_atomic
from broker.hook.client import (
    EXIT_OUTPUT,
    EXIT_RATE_LIMITED,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    BrokerClient,
    HookError,
    WorkloadIdentity,
    default_broker_id,
)
from broker.logging import configure_logging

__all__ = ["main"]

log = structlog.get_logger("broker.hook")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(
        prog="broker-hook",
        description="Fetch per-execution credentials from the broker into files (init or sidecar).",
        epilog="Exit codes: 0 ok, 2 usage, 3 no SVID, 4 broker unreachable, 5 refused, "
        "6 rate limited, 7 output not writable.",
    )
    parser.add_argument(
        "--broker-url", default=_env("BROKER_URL"), help="https://host:port [BROKER_URL]"
    )
    parser.add_argument(
        "--broker-id",
        default=_env("BROKER_SPIFFE_ID"),
        help="the broker's SPIFFE ID (default spiffe://<our trust domain>/broker) "
        "[BROKER_SPIFFE_ID]",
    )
    parser.add_argument(
        "--tools", default=_env("BROKER_TOOLS"), help="comma-separated tool names [BROKER_TOOLS]"
    )
    parser.add_argument(
        "--out",
        default=_env("BROKER_OUTPUT_DIR", "/run/credentials"),
        help="directory for <tool>.json files [BROKER_OUTPUT_DIR]",
    )
    parser.add_argument(
        "--mode",
        choices=("init", "sidecar"),
        default=_env("BROKER_HOOK_MODE", "init"),
        help="init: fetch once and exit; sidecar: keep fresh until stopped [BROKER_HOOK_MODE]",
    )
    parser.add_argument(
        "--ttl",
        type=int,
        default=int(_env("BROKER_TTL", "0") or 0) or None,
        help="requested TTL in seconds (default: the policy's maximum) [BROKER_TTL]",
    )
    parser.add_argument(
        "--user-token-file",
        default=_env("BROKER_USER_TOKEN_FILE"),
        help="file holding the end user's token, if acting for one [BROKER_USER_TOKEN_FILE]",
    )
    parser.add_argument(
        "--auth",
        choices=("x509", "jwt"),
        default=_env("BROKER_HOOK_AUTH", "x509"),
        help="present the X.509-SVID (mTLS) or a JWT-SVID [BROKER_HOOK_AUTH]",
    )
    parser.add_argument(
        "--socket", default=_env("SPIFFE_ENDPOINT_SOCKET"), help="[SPIFFE_ENDPOINT_SOCKET]"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(_env("BROKER_HOOK_TIMEOUT", "60") or 60),
        help="seconds to keep retrying transient failures [BROKER_HOOK_TIMEOUT]",
    )
    parser.add_argument(
        "--no-revoke-on-exit",
        action="store_true",
        help="sidecar: leave credentials to expire instead of revoking them",
    )
    parser.add_argument(
        "--reason", default=_env("BROKER_REASON"), help="free-text reason, audited [BROKER_REASON]"
    )
    return parser


class Hook:
    """One hook process."""

    def __init__(
        self, args: argparse.Namespace, identity: WorkloadIdentity, stop: threading.Event
    ) -> None:
        """Wire it from parsed arguments."""
        self._args = args
        self._identity = identity
        self._stop = stop
        self._out = Path(args.out)
        broker_id = args.broker_id or default_broker_id(identity.spiffe_id)
        self._client = BrokerClient(
            args.broker_url, broker_id, identity, auth=args.auth, timeout=10.0
        )
        self._tools = [t.strip() for t in args.tools.split(",") if t.strip()]
        self.held: list[dict[str, Any]] = []

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"tools": self._tools}
        if self._args.ttl:
            body["ttl_seconds"] = self._args.ttl
        if self._args.reason:
            body["reason"] = self._args.reason
        if self._args.user_token_file:
            try:
                body["user_token"] = Path(self._args.user_token_file).read_text().strip()
            except OSError as exc:
                raise HookError(
                    EXIT_USAGE, f"cannot read --user-token-file: {exc.strerror}"
                ) from None
        return body

    def fetch(self, deadline: float) -> dict[str, Any]:
        """Request credentials, retrying transient failures until `deadline`."""
        delay = 0.5
        while True:
            try:
                response = self._client.post("/v1/credentials", self._body())
            except HookError as exc:
                if exc.code != EXIT_UNREACHABLE or time.monotonic() >= deadline:
                    raise
                log.warning("broker not reachable yet; retrying", reason=str(exc))
                failure: HookError = exc
            else:
                if response.status == 201:  # noqa: PLR2004
                    return dict(response.body)
                detail = response.body.get("detail") if isinstance(response.body, dict) else None
                reasons = response.body.get("reasons") if isinstance(response.body, dict) else None
                if response.status in {400, 401, 403, 404, 413}:
                    raise HookError(
                        EXIT_REFUSED,
                        f"broker refused ({response.status}): {detail}; reasons {reasons}",
                    )
                code = EXIT_RATE_LIMITED if response.status == 429 else EXIT_UNREACHABLE  # noqa: PLR2004
                failure = HookError(
                    code,
                    f"broker answered {response.status}: {detail}",
                    retry_after=response.retry_after,
                )
                if time.monotonic() >= deadline:
                    raise failure
                log.warning(
                    "broker cannot issue yet; retrying", status=response.status, detail=detail
                )
            wait = failure.retry_after or delay
            if self._stop.wait(min(wait, max(0.0, deadline - time.monotonic()))):
                raise failure
            delay = min(delay * 2, 10.0)

    def write(self, issued: dict[str, Any]) -> None:
        """Write each credential to `<out>/<tool>.json`, atomically, mode 0600."""
        try:
            ensure_private_dir(self._out)
            for credential in issued["credentials"]:
                document = {**credential, "decision_id": issued["decision_id"]}
                write_atomic(
                    self._out / f"{credential['tool']}.json",
                    json.dumps(document, indent=2).encode(),
                )
        except OSError as exc:
            raise HookError(EXIT_OUTPUT, f"cannot write to {self._out}: {exc.strerror}") from None
        self.held = list(issued["credentials"])
        for credential in issued["credentials"]:
            log.info(
                "credential written",
                tool=credential["tool"],
                type=credential["type"],
                expires_at=credential["expires_at"],
                decision_id=issued["decision_id"],
            )

    def next_refresh(self) -> float:
        """Seconds until half of the shortest-lived credential's life is over."""
        now = time.time()
        lives = [datetime.fromisoformat(c["expires_at"]).timestamp() - now for c in self.held]
        return max(1.0, min(lives) / 2) if lives else 1.0

    def revoke_held(self) -> None:
        """Revoke the credentials this hook holds (pod shutdown)."""
        for credential in self.held:
            try:
                response = self._client.post(
                    "/v1/revoke", {"credential_id": credential["credential_id"]}
                )
            except HookError as exc:
                log.warning("could not revoke on exit", tool=credential["tool"], reason=str(exc))
                continue
            log.info("credential revoked on exit", tool=credential["tool"], status=response.status)

    def run(self) -> int:
        """Init: fetch and write once. Sidecar: also refresh at half-life until stopped."""
        self.write(self.fetch(time.monotonic() + self._args.timeout))
        if self._args.mode == "init":
            return 0
        while not self._stop.wait(self.next_refresh()):
            try:
                self.write(self.fetch(time.monotonic() + self._args.timeout))
            except HookError as exc:
                if exc.code in {EXIT_REFUSED, EXIT_OUTPUT}:
                    raise
                log.warning(
                    "refresh failed; the current credentials stay until they expire",
                    reason=str(exc),
                )
        if not self._args.no_revoke_on_exit:
            self.revoke_held()
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `broker-hook`; returns the exit code."""
    configure_logging(_env("BROKER_HOOK_LOG_LEVEL", "info") or "info")
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [name for name in ("broker_url", "tools") if not getattr(args, name)]
    if missing:
        print(f"broker-hook: --{missing[0].replace('_', '-')} is required", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    identity = None
    try:
        identity = WorkloadIdentity(args.socket, timeout=min(args.timeout, 30.0))
        return Hook(args, identity, stop).run()
    except HookError as exc:
        log.error("broker-hook failed", exit_code=exc.code, reason=str(exc))  # noqa: TRY400
        return exc.code
    finally:
        if identity is not None:
            identity.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
