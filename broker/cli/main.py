"""The `broker` command.

Exit codes: 0 success; 1 the service could not run (identity material unavailable, port in
use, a failed check); 2 usage or configuration error. Errors are one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from broker import __version__, eventloop
from broker.cli import agents, dev, tools
from broker.config.settings import load_settings
from broker.errors import ConfigError
from broker.identity.material import IdentityError
from broker.logging import configure_logging

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
MAX_WORKERS = 64


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = _Parser(prog="broker", description="SPIFFE workload-identity credential broker")
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the broker with a YAML configuration")
    serve.add_argument("--config", required=True, type=Path, metavar="FILE")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes sharing the port (SO_REUSEPORT), each with its own audit chain",
    )
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)

    dev.add_commands(commands)
    tools.add_commands(commands)
    agents.add_commands(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from broker.web.server import serve  # noqa: PLC0415 - keeps `broker --help` fast
    from broker.workers import for_worker, run_workers  # noqa: PLC0415

    if not 1 <= args.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}")
    settings = load_settings(args.config)
    configure_logging(settings.log_level)
    loop = eventloop.loop_name()
    if args.workers > 1 and args.worker_index is None:
        for_worker(settings, 0, args.workers)  # refuse what workers cannot share, up front
        return run_workers(args.config, args.workers)
    eventloop.run(serve(for_worker(settings, args.worker_index or 0, args.workers)), loop)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `broker` command.

    Args:
        argv: Arguments (default: the process's).

    Returns:
        The exit code.
    """
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"broker: configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    except IdentityError as exc:
        print(f"broker: identity unavailable: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_FAILURE
    except OSError as exc:
        print(f"broker: {exc.strerror or exc}", file=sys.stderr)  # noqa: T201
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
