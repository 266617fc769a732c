"""The tamper-evident hash chain, and its verification.

Canonical form of a record: JSON with keys sorted, no insignificant whitespace, UTF-8
(non-ASCII characters literal), values strings, integers, booleans, null, arrays and
objects only. That is exactly what `jq -cjS` prints, so anyone can check a record:

    hash = sha256( canonical(record without its "hash" member) )

and each record's `prev_hash` is the previous record's `hash` (64 zeros for the first
record of a chain). Each record also carries `chain` (one per broker replica) and `seq`
(1, 2, 3, ... within the chain). See the README for a `jq`/`sha256sum` one-liner.

Signed checkpoints (`event: audit.checkpoint`) carry an Ed25519 signature over
`"<chain>:<seq>:<hash of the previous record>"`, so a verifier holding the public key can
tell a genuine chain head from one recomputed by someone who edited the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = [
    "GENESIS",
    "ChainState",
    "VerifyResult",
    "canonical",
    "checkpoint_message",
    "record_hash",
    "verify_files",
]

GENESIS = "0" * 64
CHECKPOINT_EVENT = "audit.checkpoint"
ROTATED_EVENT = "audit.rotated"


# One encoder for every record (`json.dumps` with options builds a new one per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(record: dict[str, object]) -> bytes:
    """The canonical JSON bytes of a record."""
    return _CANONICAL.encode(record).encode()


def _encode(members: dict[str, object]) -> bytes:
    return _CANONICAL.encode(members).encode()


def _join(first: bytes, second: bytes) -> bytes:
    """Two canonical objects whose keys all sort first < second, as one object."""
    if first == b"{}":
        return second
    if second == b"{}":
        return first
    return first[:-1] + b"," + second[1:]


def record_hash(record: dict[str, object]) -> str:
    """SHA-256 (hex) of the canonical form of `record` without its `hash` member."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def checkpoint_message(chain: str, seq: int, head: str) -> bytes:
    """What a checkpoint signs."""
    return f"{chain}:{seq}:{head}".encode()


@dataclass(slots=True)
class ChainState:
    """The head of one chain: what the next record links to."""

    chain: str
    seq: int = 0
    head: str = GENESIS

    def link_line(self, record: dict[str, object]) -> bytes:
        """Stamp `record`, advance the head, and return its canonical line (with newline).

        The same bytes as `canonical(self.link(record))` plus a newline, serialised once: the
        members sorting before and after `hash` are encoded apart, hashed together, and
        the `hash` member is put between them.
        """
        self.seq += 1
        record["chain"] = self.chain
        record["seq"] = self.seq
        record["prev_hash"] = self.head
        low = _encode({k: v for k, v in record.items() if k < "hash"})
        high = _encode({k: v for k, v in record.items() if k > "hash"})
        body = _join(low, high)
        digest = hashlib.sha256(body).hexdigest()
        record["hash"] = digest
        self.head = digest
        return _join(_join(low, b'{"hash":"' + digest.encode() + b'"}'), high) + b"\n"

    def link(self, record: dict[str, object]) -> dict[str, object]:
        """Stamp `record` with chain, seq, prev_hash and hash; advance the head."""
        self.seq += 1
        record["chain"] = self.chain
        record["seq"] = self.seq
        record["prev_hash"] = self.head
        record["hash"] = record_hash(record)
        self.head = str(record["hash"])
        return record

    @classmethod
    def resume(cls, chain: str, path: Path) -> ChainState:
        """Continue the chain of an existing file from its last record."""
        last = _last_line(path)
        if last is None:
            return cls(chain)
        record = json.loads(last)
        return cls(
            chain=str(record.get("chain", chain)), seq=int(record["seq"]), head=str(record["hash"])
        )


def _last_line(path: Path) -> bytes | None:
    if not path.is_file():  # a device or FIFO holds no earlier records (and may block)
        return None
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            block = 65536
            data = b""
            while size > 0:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
                lines = [line for line in data.split(b"\n") if line.strip()]
                if len(lines) > 1 or (lines and size == 0):
                    return lines[-1]
    except FileNotFoundError:
        return None
    return None


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of verifying audit files."""

    ok: bool
    records: int
    message: str
    file: Path | None = None
    line: int | None = None
    checkpoints: int = 0


class _Verifier:
    """Walks records in order, remembering each chain's head."""

    def __init__(
        self, public_key: ed25519.Ed25519PublicKey | None, head: dict[str, object] | None
    ) -> None:
        self.public_key = public_key
        self.head = head
        self.heads: dict[str, tuple[int, str]] = {}
        self.records = 0
        self.checkpoints = 0
        self.head_hash_seen: str | None = None

    def check(self, raw: bytes, *, first_line_of_first_file: bool) -> str | None:  # noqa: PLR0911
        """The problem with one raw line, or None (and the chain advances)."""
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            return "not a JSON record"
        if not isinstance(record, dict):
            return "not a JSON object"
        missing = [m for m in ("chain", "seq", "prev_hash", "hash") if m not in record]
        if missing:
            return f"record has no {missing[0]!r}"
        if raw.rstrip(b"\n") != canonical(record):
            return "record is not in canonical form (edited?)"
        if record_hash(record) != record["hash"]:
            return "hash does not match the record's content"
        problem = self._link(
            record, continuation_allowed=first_line_of_first_file
        ) or self._signature(record)
        if problem:
            return problem
        chain, seq = str(record["chain"]), int(record["seq"])
        self.heads[chain] = (seq, str(record["hash"]))
        if (
            self.head is not None
            and chain == self.head.get("chain")
            and seq == self.head.get("seq")
        ):
            self.head_hash_seen = str(record["hash"])
        self.records += 1
        return None

    def _link(self, record: dict[str, object], *, continuation_allowed: bool) -> str | None:
        chain, seq, prev = str(record["chain"]), record["seq"], record["prev_hash"]
        expected = self.heads.get(chain)
        if expected is None:
            continuation = continuation_allowed and record.get("event") == ROTATED_EVENT
            if prev != GENESIS and not continuation:
                return (
                    "first record of the chain does not start it (prev_hash is not 64 "
                    "zeros: records before it are missing)"
                )
            if prev == GENESIS and seq != 1:
                return f"first record of the chain has seq {seq}, not 1"
            return None
        last_seq, last_hash = expected
        if prev != last_hash:
            return (
                f"prev_hash does not match the previous record of chain {chain!r} "
                "(a record was removed, reordered or altered)"
            )
        if seq != last_seq + 1:
            return f"seq {seq} does not follow {last_seq}"
        return None

    def _signature(self, record: dict[str, object]) -> str | None:
        if record.get("event") != CHECKPOINT_EVENT:
            return None
        self.checkpoints += 1
        return _check_signature(record, self.public_key) if self.public_key is not None else None

    def tail_problem(self) -> str | None:
        """Whether the log stops short of the signed head recorded beside it."""
        if self.head is None:
            return None
        chain = str(self.head.get("chain"))
        reached = self.heads.get(chain)
        wanted = int(str(self.head.get("seq", 0)))
        if reached is None or reached[0] < wanted:
            ends = reached[0] if reached else 0
            return (
                f"log truncated: the head file records seq {wanted} of chain {chain!r}, "
                f"but the log ends at seq {ends}"
            )
        if self.head_hash_seen != self.head.get("hash"):
            return (
                f"record seq {wanted} of chain {chain!r} does not match the head file (rewritten?)"
            )
        return None


def verify_files(
    paths: Iterable[Path],
    public_key: ed25519.Ed25519PublicKey | None = None,
    head: dict[str, object] | None = None,
) -> VerifyResult:
    """Verify one or more audit files, in chain order.

    The first file must start a chain (`prev_hash` of 64 zeros) or be a rotation
    continuation (its first record an `audit.rotated` event); each following file must
    continue exactly where the previous one ended. With a public key, every checkpoint's
    signature is checked too. With `head` (the `.head` file the sink writes at each
    checkpoint), the log must reach that record: a truncated tail is detected.

    Returns:
        The result, naming the first bad record's file and line (1-based) on failure.
    """
    verifier = _Verifier(public_key, head)
    for file_index, path in enumerate(paths):
        try:
            with path.open("rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    problem = verifier.check(
                        raw, first_line_of_first_file=file_index == 0 and number == 1
                    )
                    if problem:
                        return VerifyResult(
                            ok=False,
                            records=verifier.records,
                            message=f"{path}:{number}: {problem}",
                            file=path,
                            line=number,
                            checkpoints=verifier.checkpoints,
                        )
        except OSError as exc:
            return VerifyResult(
                ok=False, records=verifier.records, message=f"cannot read {path}: {exc.strerror}"
            )
    if verifier.records == 0:
        return VerifyResult(ok=False, records=0, message="no records")
    tail = verifier.tail_problem()
    if tail:
        return VerifyResult(
            ok=False, records=verifier.records, message=tail, checkpoints=verifier.checkpoints
        )
    return VerifyResult(
        ok=True,
        records=verifier.records,
        message=f"{verifier.records} records intact in {len(verifier.heads)} chain(s)",
        checkpoints=verifier.checkpoints,
    )


def _check_signature(record: dict[str, object], key: ed25519.Ed25519PublicKey) -> str | None:
    target = record.get("target")
    if not isinstance(target, dict):
        return "checkpoint carries no signature"
    try:
        signature = base64.b64decode(str(target["signature"]))
        key.verify(
            signature,
            checkpoint_message(
                str(record["chain"]), int(target["covers_seq"]), str(record["prev_hash"])
            ),
        )
    except (KeyError, ValueError, TypeError):
        return "checkpoint signature is malformed"
    except InvalidSignature:
        return "checkpoint signature does not verify (the chain head is not genuine)"
    return None
