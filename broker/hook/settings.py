"""The command line (each option also from an environment variable), parsed once into settings.

Every check happens here, before anything connects: a usage error is exit 2 with one line.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from broker.hook.errors import EXIT_USAGE, HookError
from broker.hook.identity.files import SvidFiles
from broker.hook.notify import SignalTarget, parse_signal


class AuthMode(StrEnum):
    """How the hook presents the pod's SPIFFE identity to the broker."""

    X509 = "x509"  # the X.509-SVID as TLS client certificate (mTLS)
    JWT = "jwt"  # a JWT-SVID in `Authorization: Bearer`


__all__ = ["FORMATS", "HookSettings", "build_parser", "parse_settings"]

FORMATS = ("files", "env", "json", "template")
MAX_TOOLS = 16
_TOOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_TEMPLATE_SUFFIXES = (".tmpl", ".template", ".tpl")


@dataclass(frozen=True, slots=True)
class HookSettings:
    """Everything `broker-hook` was told, validated."""

    broker_url: str
    broker_id: str | None
    tools: tuple[str, ...]
    out: Path
    formats: tuple[str, ...]
    env_file: str
    json_file: str
    template: Path | None
    template_out: str | None
    sidecar: bool
    ttl: int | None
    user_token_file: Path | None
    reason: str | None
    auth: AuthMode
    socket: str | None
    svid_files: SvidFiles | None
    timeout: float
    backoff_initial: float
    backoff_max: float
    check_interval: float
    revoke_on_exit: bool
    signal: SignalTarget | None
    on_refresh_exec: tuple[str, ...] | None
    on_refresh_timeout: float
    health_file: Path | None
    health_port: int | None
    health_stale_seconds: float
    log_level: str


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


# (flags, environment variable, argparse keywords). The README's flag table mirrors this.
_OPTIONS: list[tuple[tuple[str, ...], str | None, dict[str, Any]]] = [
    (("--broker-url", "--broker"), "BROKER_URL", {"help": "the broker, https://host:port"}),
    (
        ("--broker-id",),
        "BROKER_SPIFFE_ID",
        {"help": "the broker's SPIFFE ID (default spiffe://<our trust domain>/broker)"},
    ),
    (("--tools",), "BROKER_TOOLS", {"help": "comma-separated tool names (1 to 16)"}),
    (
        ("--out",),
        "BROKER_OUTPUT_DIR",
        {"default": "/run/credentials", "help": "output directory, made 0700"},
    ),
    (
        ("--format",),
        "BROKER_HOOK_FORMAT",
        {"default": "files", "help": f"comma-separated outputs: {', '.join(FORMATS)}"},
    ),
    (
        ("--env-file",),
        "BROKER_HOOK_ENV_FILE",
        {"default": "credentials.env", "help": "name in --out of the env format's file"},
    ),
    (
        ("--json-file",),
        "BROKER_HOOK_JSON_FILE",
        {"default": "credentials.json", "help": "name in --out of the json format's file"},
    ),
    (
        ("--template",),
        "BROKER_HOOK_TEMPLATE",
        {"help": "string.Template file for the template format"},
    ),
    (
        ("--template-out",),
        "BROKER_HOOK_TEMPLATE_OUT",
        {"help": "name in --out of the rendered template (default: --template's name less .tmpl)"},
    ),
    (
        ("--mode",),
        "BROKER_HOOK_MODE",
        {
            "choices": ("init", "sidecar"),
            "default": "init",
            "help": "init: fetch once and exit; sidecar: keep fresh until stopped",
        },
    ),
    (("--once",), None, {"action": "store_true", "help": "same as --mode init (overrides it)"}),
    (
        ("--ttl",),
        "BROKER_TTL",
        {"type": int, "help": "requested TTL, seconds (default: the broker's)"},
    ),
    (
        ("--user-token-file",),
        "BROKER_USER_TOKEN_FILE",
        {"help": "file with the end user's token (read at each request)"},
    ),
    (("--reason",), "BROKER_REASON", {"help": "free-text reason, audited"}),
    (
        ("--auth",),
        "BROKER_HOOK_AUTH",
        {
            "choices": tuple(AuthMode),
            "default": AuthMode.X509.value,
            "help": "present the X.509-SVID (mTLS) or a JWT-SVID",
        },
    ),
    (("--socket",), "SPIFFE_ENDPOINT_SOCKET", {"help": "the Workload API, unix:///path"}),
    (
        ("--svid-dir",),
        "BROKER_HOOK_SVID_DIR",
        {"help": "SVID files in the spiffe-helper layout (instead of the Workload API)"},
    ),
    (
        ("--svid-file",),
        "BROKER_HOOK_SVID_FILE",
        {"help": "the SVID certificate chain (default <svid-dir>/svid.pem)"},
    ),
    (
        ("--svid-key-file",),
        "BROKER_HOOK_SVID_KEY_FILE",
        {"help": "its private key (default <svid-dir>/svid_key.pem)"},
    ),
    (
        ("--svid-bundle-file",),
        "BROKER_HOOK_SVID_BUNDLE_FILE",
        {"help": "the trust bundle (default <svid-dir>/svid_bundle.pem)"},
    ),
    (
        ("--jwt-svid-file",),
        "BROKER_HOOK_JWT_SVID_FILE",
        {"help": "a JWT-SVID for --auth jwt with SVID files (read at each request)"},
    ),
    (
        ("--timeout",),
        "BROKER_HOOK_TIMEOUT",
        {"type": float, "default": "60", "help": "seconds to retry transient failures at start"},
    ),
    (
        ("--backoff-initial",),
        "BROKER_HOOK_BACKOFF_INITIAL",
        {"type": float, "default": "0.5", "help": "ceiling of the first retry delay, seconds"},
    ),
    (
        ("--backoff-max",),
        "BROKER_HOOK_BACKOFF_MAX",
        {"type": float, "default": "30", "help": "largest retry delay, seconds"},
    ),
    (
        ("--check-interval",),
        "BROKER_HOOK_CHECK_INTERVAL",
        {
            "type": float,
            "default": "30",
            "help": "sidecar: seconds between introspections of held tokens (0: never)",
        },
    ),
    (
        ("--no-revoke-on-exit",),
        None,
        {
            "action": "store_true",
            "help": "sidecar: leave credentials to expire instead of revoking them on SIGTERM",
        },
    ),
    (
        ("--on-refresh-signal",),
        "BROKER_HOOK_ON_REFRESH_SIGNAL",
        {"help": "signal (e.g. SIGHUP) sent after each change"},
    ),
    (("--signal-pid",), "BROKER_HOOK_SIGNAL_PID", {"type": int, "help": "the PID to signal"}),
    (
        ("--pid-file",),
        "BROKER_HOOK_PID_FILE",
        {"help": "file holding the PID to signal (read each time)"},
    ),
    (
        ("--on-refresh-exec",),
        "BROKER_HOOK_ON_REFRESH_EXEC",
        {"help": "command run after each change (no shell; shlex-split)"},
    ),
    (
        ("--on-refresh-timeout",),
        "BROKER_HOOK_ON_REFRESH_TIMEOUT",
        {"type": float, "default": "30", "help": "seconds before that command is killed"},
    ),
    (
        ("--health-file",),
        "BROKER_HOOK_HEALTH_FILE",
        {"help": "JSON status while healthy, absent otherwise"},
    ),
    (
        ("--health-port",),
        "BROKER_HOOK_HEALTH_PORT",
        {"type": int, "help": "serve GET /healthz on 127.0.0.1:N"},
    ),
    (
        ("--health-stale-seconds",),
        "BROKER_HOOK_HEALTH_STALE_SECONDS",
        {
            "type": float,
            "default": "30",
            "help": "unhealthy when a credential expires within this many seconds",
        },
    ),
    (
        ("--log-level",),
        "BROKER_HOOK_LOG_LEVEL",
        {"choices": ("debug", "info", "warning", "error"), "default": "info", "help": "log level"},
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar; environment variables give the defaults."""
    parser = argparse.ArgumentParser(
        prog="broker-hook",
        description="Fetch per-execution credentials from the broker into files (init or sidecar).",
        epilog="Exit codes: 0 ok, 2 usage, 3 no SVID, 4 broker unreachable, 5 refused, "
        "6 rate limited, 7 output not writable.",
        allow_abbrev=False,
    )
    for flags, env, options in _OPTIONS:
        keywords = dict(options)
        if env is not None:
            keywords["default"] = _env(env, keywords.get("default"))
            keywords["help"] = f"{keywords['help']} [{env}]"
        parser.add_argument(*flags, **keywords)
    return parser


def environment_variables() -> list[str]:
    """Every environment variable the hook reads (for the documentation test)."""
    return [env for _, env, _ in _OPTIONS if env is not None]


def _fail(message: str) -> HookError:
    return HookError(EXIT_USAGE, message)


def _tools(value: str | None) -> tuple[str, ...]:
    tools = tuple(dict.fromkeys(t.strip() for t in (value or "").split(",") if t.strip()))
    if not tools:
        raise _fail("--tools is required")
    if len(tools) > MAX_TOOLS:
        raise _fail(f"--tools: at most {MAX_TOOLS} tools")
    bad = [t for t in tools if not _TOOL.fullmatch(t)]
    if bad:
        raise _fail(f"--tools: invalid tool name {bad[0]!r}")
    return tools


def _formats(value: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip() for f in value.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise _fail(f"--format: choose from {', '.join(FORMATS)}")
    return formats


def _file_name(value: str, flag: str) -> str:
    if not value or value in {".", ".."} or "/" in value or "\0" in value:
        raise _fail(f"{flag} is a file name inside --out, not {value!r}")
    return value


def _template_out(args: argparse.Namespace) -> str | None:
    if args.template is None:
        return None
    if args.template_out:
        return _file_name(args.template_out, "--template-out")
    name = Path(args.template).name
    for suffix in _TEMPLATE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name.removesuffix(suffix)
    return name


def _check_outputs(
    args: argparse.Namespace, formats: tuple[str, ...], tools: tuple[str, ...]
) -> str | None:
    if ("template" in formats) != (args.template is not None):
        raise _fail("--format template and --template go together")
    template_out = _template_out(args)
    names: list[str] = []
    if "files" in formats:
        names.extend(f"{t}.json" for t in tools)
    if "env" in formats:
        names.append(_file_name(args.env_file, "--env-file"))
    if "json" in formats:
        names.append(_file_name(args.json_file, "--json-file"))
    if template_out is not None:
        names.append(template_out)
        source = Path(args.template).resolve()
        if source == (Path(args.out) / template_out).resolve():
            raise _fail("--template-out would overwrite the template itself")
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise _fail(f"two outputs write the same file: {', '.join(clashes)}")
    return template_out


def _svid_files(args: argparse.Namespace) -> SvidFiles | None:
    explicit = (args.svid_file, args.svid_key_file, args.svid_bundle_file)
    if args.svid_dir is None and all(p is None for p in explicit):
        if args.jwt_svid_file is not None:
            raise _fail("--jwt-svid-file goes with SVID files (--svid-dir ...)")
        return None
    files = SvidFiles.locate(
        Path(args.svid_dir) if args.svid_dir else None,
        svid=Path(args.svid_file) if args.svid_file else None,
        key=Path(args.svid_key_file) if args.svid_key_file else None,
        bundle=Path(args.svid_bundle_file) if args.svid_bundle_file else None,
        jwt_svid=Path(args.jwt_svid_file) if args.jwt_svid_file else None,
    )
    if args.auth == AuthMode.JWT and files.jwt_svid is None:
        raise _fail("--auth jwt with SVID files needs --jwt-svid-file")
    return files


def _signal_target(args: argparse.Namespace) -> SignalTarget | None:
    if args.on_refresh_signal is None:
        if args.signal_pid is not None or args.pid_file is not None:
            raise _fail("--signal-pid and --pid-file need --on-refresh-signal")
        return None
    if (args.signal_pid is None) == (args.pid_file is None):
        raise _fail("--on-refresh-signal needs exactly one of --signal-pid, --pid-file")
    if args.signal_pid is not None and args.signal_pid <= 1:
        raise _fail("--signal-pid must be a process's PID (> 1)")
    return SignalTarget(
        parse_signal(args.on_refresh_signal),
        pid=args.signal_pid,
        pid_file=Path(args.pid_file) if args.pid_file else None,
    )


def _command(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        argv = tuple(shlex.split(value))
    except ValueError as exc:
        raise _fail(f"--on-refresh-exec: {exc}") from None
    if not argv:
        raise _fail("--on-refresh-exec is empty")
    return argv


def _check_numbers(args: argparse.Namespace) -> None:
    if args.ttl is not None and args.ttl < 0:
        raise _fail("--ttl must be at least 1 (0: the broker's default)")
    if args.timeout <= 0 or args.backoff_initial <= 0 or args.on_refresh_timeout <= 0:
        raise _fail("--timeout, --backoff-initial and --on-refresh-timeout must be positive")
    if args.backoff_max < args.backoff_initial:
        raise _fail("--backoff-max must be at least --backoff-initial")
    if args.check_interval < 0 or args.health_stale_seconds < 0:
        raise _fail("--check-interval and --health-stale-seconds must not be negative")
    if args.health_port is not None and not 0 <= args.health_port <= 65535:  # noqa: PLR2004
        raise _fail("--health-port must be a TCP port")


def parse_settings(argv: Sequence[str] | None = None) -> HookSettings:
    """Parse and check the command line.

    Raises:
        HookError: A usage error (exit 2).
        SystemExit: argparse's own usage errors (exit 2) and `--help`.
    """
    args = build_parser().parse_args(argv)
    if not args.broker_url:
        raise _fail("--broker-url is required")
    tools = _tools(args.tools)
    formats = _formats(args.format)
    _check_numbers(args)
    template_out = _check_outputs(args, formats, tools)
    return HookSettings(
        broker_url=args.broker_url,
        broker_id=args.broker_id or None,
        tools=tools,
        out=Path(args.out),
        formats=formats,
        env_file=args.env_file,
        json_file=args.json_file,
        template=Path(args.template) if args.template else None,
        template_out=template_out,
        sidecar=args.mode == "sidecar" and not args.once,
        ttl=args.ttl or None,
        user_token_file=Path(args.user_token_file) if args.user_token_file else None,
        reason=args.reason or None,
        auth=AuthMode(args.auth),
        socket=args.socket or None,
        svid_files=_svid_files(args),
        timeout=args.timeout,
        backoff_initial=args.backoff_initial,
        backoff_max=args.backoff_max,
        check_interval=args.check_interval,
        revoke_on_exit=not args.no_revoke_on_exit,
        signal=_signal_target(args),
        on_refresh_exec=_command(args.on_refresh_exec),
        on_refresh_timeout=args.on_refresh_timeout,
        health_file=Path(args.health_file) if args.health_file else None,
        health_port=args.health_port,
        health_stale_seconds=args.health_stale_seconds,
        log_level=args.log_level,
    )
