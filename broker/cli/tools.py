"""`broker policy check`, `broker audit verify`, `broker keys rotate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from broker.audit.chain import verify_files
from broker.cli import governance
from broker.clock import SystemClock
from broker.config.settings import load_settings
from broker.constants import ISSUER_ALGORITHMS
from broker.errors import ConfigError
from broker.issuers.jwt.keys import add_key
from broker.policy.loader import load_policy

__all__ = ["add_commands"]


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Register the operator tools."""
    policy = commands.add_parser("policy", help="policy tools")
    policy_sub = policy.add_subparsers(
        dest="policy_command", required=True, parser_class=type(policy)
    )
    check = policy_sub.add_parser("check", help="validate a policy file")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--config", type=Path, help="also check the tool names against this configuration"
    )
    check.set_defaults(run=_policy_check)

    audit = commands.add_parser("audit", help="audit trail tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, parser_class=type(audit))
    verify = audit_sub.add_parser(
        "verify", help="check the hash chain of audit files (several: oldest first)"
    )
    verify.add_argument("files", type=Path, nargs="+", metavar="FILE")
    verify.add_argument(
        "--public-key", type=Path, help="Ed25519 public key (PEM) to check signed checkpoints"
    )
    verify.add_argument(
        "--no-head", action="store_true", help="ignore the FILE.head sidecar of the last file"
    )
    verify.set_defaults(run=_audit_verify)
    governance.add_audit_commands(audit_sub)

    keys = commands.add_parser("keys", help="signing key tools")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, parser_class=type(keys))
    rotate = keys_sub.add_parser("rotate", help="add a successor signing key to a key file")
    rotate.add_argument("--file", type=Path, required=True)
    rotate.add_argument("--algorithm", choices=ISSUER_ALGORITHMS, default="ES256")
    rotate.add_argument(
        "--publish-ahead",
        type=int,
        default=600,
        help="seconds the new key is published before it signs (default 600)",
    )
    rotate.set_defaults(run=_keys_rotate)


def _policy_check(args: argparse.Namespace) -> int:
    known = None
    if args.config is not None:
        known = frozenset(t.name for t in load_settings(args.config).tools)
    policy = load_policy(args.file, known_tools=known)
    print(  # noqa: T201
        f"{args.file}: policy {policy.id} version {policy.version}: "
        f"{len(policy.rules)} rules, valid"
    )
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    key = None
    if args.public_key is not None:
        try:
            loaded = load_pem_public_key(args.public_key.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{args.public_key}: not a PEM public key ({exc})") from None
        if not isinstance(loaded, ed25519.Ed25519PublicKey):
            raise ConfigError(f"{args.public_key}: not an Ed25519 public key")
        key = loaded
    chains = by_chain(args.files)
    failed = False
    for chain, files in chains.items():
        head = None
        head_file = files[-1].with_name(files[-1].name + ".head")
        if not args.no_head and head_file.is_file():
            try:
                head = json.loads(head_file.read_text())
            except (OSError, ValueError):
                raise ConfigError(f"{head_file}: not a readable head file") from None
        result = verify_files(files, key, head)
        label = f"chain {chain}: " if len(chains) > 1 else ""
        if result.ok:
            signed = f", {result.checkpoints} checkpoints" + (" verified" if key else "")
            print(f"OK: {label}{result.message}{signed if result.checkpoints else ''}")  # noqa: T201
        else:
            print(f"FAILED: {label}{result.message}")  # noqa: T201
            failed = True
    return 1 if failed else 0


def by_chain(files: list[Path]) -> dict[str, list[Path]]:
    """The files of each chain, in the order given (`--workers` writes one chain each).

    A file is placed by the `chain` of its first record; one that cannot be read stays in
    a group of its own, where verification reports it.
    """
    chains: dict[str, list[Path]] = {}
    for path in files:
        chain = f"<{path}>"
        try:
            with path.open("rb") as handle:
                first = json.loads(handle.readline() or b"{}")
            if isinstance(first, dict) and isinstance(first.get("chain"), str):
                chain = first["chain"]
        except (OSError, ValueError):
            pass
        chains.setdefault(chain, []).append(path)
    return chains


def _keys_rotate(args: argparse.Namespace) -> int:
    if args.publish_ahead < 0:
        raise ConfigError("--publish-ahead must not be negative")
    key = add_key(
        args.file,
        args.algorithm,
        now=SystemClock().time(),
        publish_ahead=args.publish_ahead,
        leeway=60,
    )
    print(f"{args.file}: added key {key.kid} ({key.alg}), signing from +{args.publish_ahead} s")  # noqa: T201
    return 0
