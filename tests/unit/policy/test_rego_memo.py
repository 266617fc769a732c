"""Which input fields a Rego policy reads (the decision memo's key): a table of modules."""

from __future__ import annotations

import pytest

from broker.dev.rego_policy import policy_rego
from broker.policy.rego_reads import input_fields


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x := input.user.tier", {"user"}),
        ('x := input["time"].hour', {"time"}),
        ("x := input[`tools`]", {"tools"}),
        ("x := input.user\ny := input.tools[0]\nz := input.user.iss", {"user", "tools"}),
        ("# input.time, input\nx := 1", set()),
        ('x := "input.time"\ny := `input` # input["time"]', set()),
        ('x := "a \\" input.time"\ny := input.tools', {"tools"}),
        ("x := y.input.time\ny := data.input", set()),
        ("x := input.a with input.b as 1", {"a", "b"}),
        ("x := time.parse_rfc3339_ns(input.time.rfc3339)", {"time"}),
        ("x := input", None),
        ("x := count(input) > 0", None),
        ("x := input[k]", None),
        ("x := {k | some k, _ in input}", None),
        ("x := walk(input)", None),
        ("import input as i\nx := i.user", None),
        ("x := 1 with input as {}", None),
        ('x := input\n["user"]', None),
        ("x := input. user", None),
        ("x := time.now_ns()", None),
        ("x := time . now_ns()", None),
        ("x := rand.intn(input.user.sub, 10)", None),
        ('x := uuid.rfc4122("a")', None),
        ('x := http.send({"method": "get", "url": "https://x"})', None),
        ('x := net.lookup_ip_addr("x")', None),
        ("x := opa.runtime()", None),
        ('x := io.jwt.decode_verify(input.token, {"cert": "x"})', None),
        ('x := crypto.x509.parse_and_verify_certificates("x")', None),
        ('x := $"{input.user}"', None),
    ],
)
def test_the_fields_a_module_reads(source: str, expected: set[str] | None) -> None:
    """`input.NAME`/`input["NAME"]` name a field; other uses, or clock/network builtins: None."""
    found = input_fields({"m.rego": f"package t\nimport rego.v1\n{source}\n"})
    assert found == (None if expected is None else frozenset(expected))


def test_every_module_of_a_load_counts() -> None:
    """The fields are those of all modules; one module reading the whole input turns it off."""
    one, two = "package a\nx := input.user\n", "package b\ny := input.time\n"
    assert input_fields({"a.rego": one, "b.rego": two}) == {"user", "time"}
    assert input_fields({"a.rego": one, "b.rego": "package b\ny := input\n"}) is None


def test_the_dev_policy_reads_five_fields_and_not_the_time() -> None:
    """caller, user, actors, tools, ttl_requested: a request at another time reuses a result."""
    assert input_fields({"policy.rego": policy_rego()}) == {
        "caller",
        "user",
        "actors",
        "tools",
        "ttl_requested",
    }
