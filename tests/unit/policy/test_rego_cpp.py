"""rego-cpp's C API as bound here: input in, JSON value out, errors as exceptions (no abort)."""

from __future__ import annotations

import pytest

from broker.policy.rego_cpp import Bundle, Interpreter, RegoCppError, build

MODULE = """package t
import rego.v1
echo := input
missing := input.nothing
big := [x | some x in numbers.range(1, 5000)]
loop := object.get(data, ["t", "echo"], 0)
"""


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return build({"t.rego": MODULE}, {"k": 1}, ["t/echo", "t/missing", "t/big", "t/loop"])


def test_the_input_document_reaches_the_policy_unchanged(bundle: Bundle) -> None:
    """Strings (non-ASCII too), ints, floats, booleans, null, lists and objects round-trip."""
    document = {"s": "héllo", "i": -3, "f": 1.5, "b": False, "n": None, "l": [1, "x", [True]]}
    interpreter = Interpreter()
    interpreter.set_input({"nested": document})
    assert interpreter.query(bundle, b"t/echo") == {"nested": document}


def test_an_undefined_value_is_none_and_a_large_one_is_read_whole(bundle: Bundle) -> None:
    """Undefined is None, not a crash; a result larger than the first buffer is complete."""
    interpreter = Interpreter()
    interpreter.set_input({})
    assert interpreter.query(bundle, b"t/missing") is None
    assert interpreter.query(bundle, b"t/big") == list(range(1, 5001))


def test_failures_raise_instead_of_aborting(bundle: Bundle) -> None:
    """Not compiling, an unknown entrypoint, a runtime error, a non-JSON input: exceptions."""
    with pytest.raises(RegoCppError, match="Invalid assignment"):
        build({"bad.rego": "package t\nx := \n"}, None, ["t/x"])
    interpreter = Interpreter()
    interpreter.set_input({})
    with pytest.raises(RegoCppError):
        interpreter.query(bundle, b"t/nowhere")
    with pytest.raises(RegoCppError, match="Recursion"):
        interpreter.query(bundle, b"t/loop")
    with pytest.raises(TypeError):
        interpreter.set_input({"x": object()})
