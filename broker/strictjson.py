"""Strict JSON for untrusted input: depth bounded before parsing, duplicate members refused.

Python's `json` recurses once per nesting level (a body of 100k `[` is a RecursionError)
and keeps the last of duplicate members (a second `alg` or `sub` would win). Request
bodies and JOSE segments both go through here.
"""

from __future__ import annotations

import operator
from itertools import accumulate, count

__all__ = ["MAX_JSON_DEPTH", "too_deep", "unique_members"]

MAX_JSON_DEPTH = 32  # request bodies nest two levels; `act` chains stop at 8

_OPENERS_CLOSERS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_DEPTH_STEPS = bytes.maketrans(b"[]", b"\x02\x00")


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays/objects nest deeper than `limit`, found without parsing.

    Strings are cut out first (escaped backslashes, then escaped quotes, then split on
    quotes), so brackets inside them do not count; the depth is then the largest prefix
    sum of +1 per opening and -1 per closing bracket. Every step runs in C: a 64 KiB body
    costs about as much as json.loads of it, and an ordinary one only the two counts.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    outside = b"".join(raw.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = outside.translate(_OPENERS_CLOSERS, _NOT_BRACKETS)
    if b"[" * (limit + 1) in brackets:
        return True
    steps = brackets.translate(_DEPTH_STEPS)  # "[" -> 2, "]" -> 0: running sum - index = depth
    return max(map(operator.sub, accumulate(steps), count(1)), default=0) > limit


class DuplicateMember(ValueError):
    """A JSON object named the same member twice."""


def unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """`object_pairs_hook` refusing duplicate member names.

    Raises:
        DuplicateMember: A name appears twice.
    """
    out: dict[str, object] = {}
    for name, value in pairs:
        if name in out:
            raise DuplicateMember(f"has a duplicate member {name[:64]!r}")
        out[name] = value
    return out
