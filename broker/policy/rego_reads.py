"""Which top-level fields of the input a Rego policy reads, found once per load from its text.

A Rego policy is a pure function of its input and data unless it calls a builtin that
reads the clock, randomness or the network; data is fixed for a load. So two requests
whose input documents agree on every field the policy reads get the same result, and a
result can be reused (`RegoDecisions`). This module says which fields those are, or that
it cannot tell (None), erring towards None:

- the root document `input` (the identifier, not after a `.`, so `x.input.y` is not it)
  may only be read as `input.NAME` or `input["NAME"]` (a string literal), immediately
  after `input` (no space: Rego splits expressions at newlines). `NAME` is then read. Any
  other use (`input` alone, `input[x]`, `some k in input`, `with input as ...`, `import
  input as x`, `walk(input)`) may read all of it: None.
- any reference to a builtin that is not a function of its arguments (`time.now_ns`,
  `rand.`, `uuid.`, `http.`, `net.`, `opa.runtime`, `io.jwt.decode_verify`,
  `crypto.x509.parse_and_verify...`), wherever it appears in a dotted name: None.
- a template string (`$"..."`), whose interpolations are code inside a string: None.

Tokens are read past `#` comments, `"..."` strings (with escapes) and `` `raw` `` strings,
so text in a string or a comment is never taken for a reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

__all__ = ["NON_DETERMINISTIC", "input_fields"]

NON_DETERMINISTIC = (
    "time.now_ns",
    "rand.",
    "uuid.",
    "http.",
    "net.",
    "opa.runtime",
    "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify",
)

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<template>\$["`])
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)


class _Token(NamedTuple):
    kind: str
    text: str
    start: int
    end: int


class _Unknown(Exception):
    """Control flow: the fields read cannot be told (never leaves this module)."""


def _tokens(text: str) -> list[_Token]:
    """Every token but spaces and comments; raises `_Unknown` on text it cannot read."""
    out: list[_Token] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "other"
        if kind in {"space", "comment"}:
            continue
        if kind == "template" or (kind == "other" and match.group() in {'"', "`"}):
            raise _Unknown  # a template string, or a string that never closes
        out.append(_Token(kind, match.group(), match.start(), match.end()))
    return out


def _string_value(token: _Token) -> str:
    if token.kind == "raw":
        return token.text[1:-1]
    try:
        value = json.loads(token.text)  # Rego's string escapes are JSON's
    except ValueError:
        raise _Unknown from None
    if not isinstance(value, str):
        raise _Unknown
    return value


def _field(tokens: list[_Token], i: int) -> str | None:
    """The field `input` at `i` reads: None when it is not the root `input` at all.

    Raises:
        _Unknown: The root `input` used other than as `input.NAME` or `input["NAME"]`.
    """
    here = tokens[i]
    before = tokens[i - 1] if i > 0 else None
    if before is not None and before.text == "." and before.end == here.start:
        return None  # `x.input`: a key named input, not the root document
    match tokens[i + 1 : i + 4]:
        case [_Token(text=".") as dot, _Token(kind="name") as name, *_] if (
            here.end == dot.start and dot.end == name.start
        ):
            return name.text
        case [_Token(text="[") as bracket, _Token(kind="string" | "raw") as key, _Token(text="]")]:
            if here.end == bracket.start:
                return _string_value(key)
    raise _Unknown


def _dotted_names(tokens: list[_Token]) -> Iterable[str]:
    """Every dotted name (`a.b.c`, spaces allowed) and each of its tails (`b.c`, `c`)."""
    parts: list[str] = []
    for i, token in enumerate(tokens):
        if token.kind != "name":
            continue
        match tokens[max(0, i - 2) : i]:
            case [_Token(kind="name"), _Token(text=".")]:
                parts = [*parts, token.text]
            case _:
                parts = [token.text]
        for start in range(len(parts)):
            yield ".".join(parts[start:])


def _reads(text: str, fields: set[str]) -> None:
    tokens = _tokens(text)
    for name in _dotted_names(tokens):
        if name.startswith(NON_DETERMINISTIC):
            raise _Unknown
    for i, token in enumerate(tokens):
        if token.kind == "name" and token.text == "input":
            field = _field(tokens, i)
            if field is not None:
                fields.add(field)


def input_fields(modules: Mapping[str, str]) -> frozenset[str] | None:
    """The top-level input fields the modules read, or None when that cannot be told.

    Args:
        modules: Each module's text (every module of the load: any may read the input).

    Returns:
        The names of the fields read (`{"caller", "user"}` for `input.caller`,
        `input["user"]`), or None: some module reads the input as a whole, or calls a
        builtin whose answer is not a function of its arguments.
    """
    fields: set[str] = set()
    try:
        for text in modules.values():
            _reads(text, fields)
    except _Unknown:
        return None
    return frozenset(fields)
