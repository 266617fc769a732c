"""rego-cpp's C API, bound directly: the library the `regopy` wheel ships, without its wrappers.

Why not regopy's classes on the per-request path: its `Input` walks the input document
in Python through a wrapper (and a string buffer) per value, and its `Output` serialises
the result to JSON twice and parses it into `Result` objects; together about as much as
rego-cpp's own evaluation of a small policy. Here each value of the input is one C call,
and the result is serialised once, into a reused buffer, and parsed with `json.loads`.
`regoOutputBinding` (which aborts the process on an unbound name) is not bound at all.

Every function used is part of rego-cpp's public C API (`rego/rego_c.h`). An
`Interpreter` is not thread-safe: each thread that evaluates has its own (a `Bundle`,
once built, is only read).
"""

from __future__ import annotations

import ctypes
import json
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final

from regopy import rego_shared

__all__ = ["Bundle", "Interpreter", "RegoCppError", "build"]

_OK: Final = 0
_BUFFER_TOO_SMALL: Final = 2
_UNDEFINED: Final = b"undefined"
_FIRST_BUFFER: Final = 16 * 1024

_P = ctypes.c_void_p
_STR = ctypes.c_char_p
_U32 = ctypes.c_uint32


class RegoCppError(Exception):
    """rego-cpp refused a call (its own message)."""


def _bind(lib: ctypes.CDLL, name: str, args: list[Any], result: Any) -> Any:  # noqa: ANN401
    function = getattr(lib, name)
    function.argtypes = args
    function.restype = result
    return function


# A handle of our own on the same shared object: regopy's argument declarations stay its own.
_lib = ctypes.CDLL(rego_shared.path)
_new = _bind(_lib, "regoNew", [], _P)
_free = _bind(_lib, "regoFree", [_P], None)
_error_size = _bind(_lib, "regoErrorSize", [_P], _U32)
_error = _bind(_lib, "regoError", [_P, _STR, _U32], _U32)
_add_module = _bind(_lib, "regoAddModule", [_P, _STR, _STR], _U32)
_add_data_json = _bind(_lib, "regoAddDataJSON", [_P, _STR], _U32)
_add_entrypoint = _bind(_lib, "regoAddEntrypoint", [_P, _STR], _U32)
_build = _bind(_lib, "regoBuild", [_P], _P)
_bundle_ok = _bind(_lib, "regoBundleOk", [_P], ctypes.c_bool)
_free_bundle = _bind(_lib, "regoFreeBundle", [_P], None)
_set_input = _bind(_lib, "regoSetInput", [_P, _P], _U32)
_query_entrypoint = _bind(_lib, "regoBundleQueryEntrypoint", [_P, _P, _STR], _P)
_output_ok = _bind(_lib, "regoOutputOk", [_P], ctypes.c_bool)
_output_json = _bind(_lib, "regoOutputJSON", [_P, _STR, _U32], _U32)
_output_json_size = _bind(_lib, "regoOutputJSONSize", [_P], _U32)
_free_output = _bind(_lib, "regoFreeOutput", [_P], None)
_new_input = _bind(_lib, "regoNewInput", [], _P)
_free_input = _bind(_lib, "regoFreeInput", [_P], None)
_in_string = _bind(_lib, "regoInputString", [_P, _STR], _U32)
_in_int = _bind(_lib, "regoInputInt", [_P, ctypes.c_int64], _U32)
_in_float = _bind(_lib, "regoInputFloat", [_P, ctypes.c_double], _U32)
_in_bool = _bind(_lib, "regoInputBoolean", [_P, ctypes.c_bool], _U32)
_in_null = _bind(_lib, "regoInputNull", [_P], _U32)
_in_item = _bind(_lib, "regoInputObjectItem", [_P], _U32)
_in_object = _bind(_lib, "regoInputObject", [_P, _U32], _U32)
_in_array = _bind(_lib, "regoInputArray", [_P, _U32], _U32)


def _message(handle: int) -> str:
    size = _error_size(handle)
    buffer = ctypes.create_string_buffer(size)
    _error(handle, buffer, size)
    return buffer.value.decode("utf-8", "replace")


class Bundle:
    """A compiled policy: modules, data and the plans of its entrypoints (read-only)."""

    __slots__ = ("__weakref__", "handle")

    def __init__(self, handle: int) -> None:
        """Own `handle` (freed with this object)."""
        self.handle = handle
        weakref.finalize(self, _free_bundle, handle)


def build(modules: Mapping[str, str], data: object, entrypoints: Iterable[str]) -> Bundle:
    """Compile modules and a data document into a bundle with these entrypoints.

    Raises:
        RegoCppError: A module or the data does not compile (rego-cpp's message).
    """
    handle = _new()
    try:
        if data is not None and _add_data_json(handle, json.dumps(data).encode()) != _OK:
            raise RegoCppError(_message(handle))
        for name, text in modules.items():
            if _add_module(handle, name.encode(), text.encode()) != _OK:
                raise RegoCppError(_message(handle))
        for entrypoint in entrypoints:
            _add_entrypoint(handle, entrypoint.encode())
        bundle = _build(handle)
        if not bundle:
            raise RegoCppError(_message(handle))
        if not _bundle_ok(bundle):
            _free_bundle(bundle)
            raise RegoCppError(_message(handle) or "the policy does not compile")
        return Bundle(bundle)
    finally:
        _free(handle)


def _put(handle: int, value: object) -> None:
    """Push one JSON value onto an input under construction (rego-cpp's input is a stack)."""
    if value is None:
        _in_null(handle)
    elif value is True or value is False:
        _in_bool(handle, value)
    elif isinstance(value, str):
        _in_string(handle, value.encode())
    elif isinstance(value, int):
        _in_int(handle, value)
    elif isinstance(value, float):
        _in_float(handle, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _in_string(handle, key.encode())
            _put(handle, item)
            _in_item(handle)
        _in_object(handle, len(value))
    elif isinstance(value, list | tuple):
        for item in value:
            _put(handle, item)
        _in_array(handle, len(value))
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")


class Interpreter:
    """Evaluates bundles' entrypoints on an input document (one thread at a time)."""

    __slots__ = ("__weakref__", "_buffer", "_handle")

    def __init__(self) -> None:
        """A fresh interpreter."""
        self._handle: int = _new()
        self._buffer = ctypes.create_string_buffer(_FIRST_BUFFER)
        weakref.finalize(self, _free, self._handle)

    def set_input(self, document: Mapping[str, object]) -> None:
        """Make `document` the input of the next queries.

        Raises:
            RegoCppError: rego-cpp refused the document.
            TypeError: A value is not JSON (str, int, float, bool, None, dict, list).
        """
        built = _new_input()
        try:
            _put(built, document)
            if _set_input(self._handle, built) != _OK:
                raise RegoCppError(_message(self._handle))
        finally:
            _free_input(built)

    def query(self, bundle: Bundle, entrypoint: bytes) -> object:
        """The entrypoint's value on the current input; None when it is undefined.

        Raises:
            RegoCppError: The evaluation failed (a runtime error, an unknown entrypoint).
        """
        output = _query_entrypoint(self._handle, bundle.handle, entrypoint)
        if not output:
            raise RegoCppError(_message(self._handle))
        try:
            text = self._text(output)
            if not _output_ok(output):
                raise RegoCppError(text.decode("utf-8", "replace"))
        finally:
            _free_output(output)
        if text == _UNDEFINED:
            return None
        try:
            # Some runtime errors (recursion through `data`) come back "ok", as an error AST.
            expressions = json.loads(text).get("expressions")
        except (ValueError, AttributeError):
            raise RegoCppError(text.decode("utf-8", "replace")) from None
        return expressions[0] if expressions else None

    def _text(self, output: int) -> bytes:
        code = _output_json(output, self._buffer, len(self._buffer))
        if code == _BUFFER_TOO_SMALL:
            self._buffer = ctypes.create_string_buffer(_output_json_size(output))
            code = _output_json(output, self._buffer, len(self._buffer))
        if code != _OK:
            raise RegoCppError(f"rego-cpp could not serialise the result (code {code})")
        return self._buffer.value
