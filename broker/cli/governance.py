"""`broker audit explain` (and the other governance tools of the audit trail)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from broker.audit.chain import verify_files
from broker.errors import ConfigError
from broker.governance.archive import archive_dir_for
from broker.governance.explain import Question, explain, parse_time, read_records
from broker.governance.ocsf import to_ocsf

__all__ = ["add_audit_commands"]


def add_audit_commands(audit_sub: argparse._SubParsersAction[Any]) -> None:
    """Register `broker audit explain`."""
    cmd = audit_sub.add_parser(
        "explain", help="what the policy in force at a time would have decided, and why"
    )
    cmd.add_argument(
        "files", type=Path, nargs="+", metavar="FILE", help="audit files, oldest first"
    )
    cmd.add_argument(
        "--at", required=True, metavar="TIME", help="RFC 3339, e.g. 2026-11-21T10:05:00Z"
    )
    cmd.add_argument("--agent", required=True, metavar="SPIFFE_ID")
    cmd.add_argument("--tool", help="one tool (default: every tool the policy names for the agent)")
    cmd.add_argument("--user", metavar="SUB", help="the user's subject")
    cmd.add_argument("--issuer", help="the user's issuer (default: from the agent's records)")
    cmd.add_argument("--tier", help="the user's tier")
    cmd.add_argument("--group", action="append", default=[], help="a group of the user")
    cmd.add_argument(
        "--around", type=int, default=3600, metavar="S", help="activity window, seconds (3600)"
    )
    cmd.add_argument(
        "--policies", type=Path, help="kept policy versions (default: policies/ beside FILE)"
    )
    cmd.set_defaults(run=_explain)

    export = audit_sub.add_parser(
        "export", help="verify the chain, then write the records as OCSF events (JSON lines)"
    )
    export.add_argument("files", type=Path, nargs="+", metavar="FILE", help="oldest first")
    export.add_argument("--format", required=True, choices=("ocsf",))
    export.add_argument("--output", "-o", type=Path, help="write here instead of stdout")
    export.set_defaults(run=_export)


def _explain(args: argparse.Namespace) -> int:
    result = verify_files(args.files)
    if not result.ok:
        print(f"FAILED: {result.message}")  # noqa: T201
        return 1
    question = Question(
        at=parse_time(args.at),
        agent=args.agent,
        tool=args.tool,
        user=args.user,
        issuer=args.issuer,
        tier=args.tier,
        groups=tuple(args.group),
        around=timedelta(seconds=args.around),
    )
    if args.around < 0:
        raise ConfigError("--around must not be negative")
    policies = args.policies or archive_dir_for(args.files[-1])
    print(json.dumps(explain(args.files, policies, question), indent=2))  # noqa: T201
    return 0


def _export(args: argparse.Namespace) -> int:
    from broker.cli.tools import by_chain  # noqa: PLC0415 - tools imports this module

    for files in by_chain(args.files).values():
        result = verify_files(files)
        if not result.ok:
            print(f"FAILED: {result.message}", file=sys.stderr)  # noqa: T201
            return 1
    lines = (json.dumps(to_ocsf(r), separators=(",", ":")) for r in read_records(args.files))
    if args.output is None:
        for line in lines:
            print(line)  # noqa: T201
        return 0
    with args.output.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(line + "\n")
    return 0
