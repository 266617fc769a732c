"""SPIFFE ID parsing is strict: canonical form, valid characters, workload paths."""

from __future__ import annotations

import pytest

from broker.spiffe_id import parse_spiffe_id, parse_trust_domain, trust_domain_of


@pytest.mark.parametrize(
    "value",
    ["spiffe://example.org/agent/claims", "spiffe://a-b.c_d/x/y.z", "spiffe://example.org/a/b/c"],
)
def test_valid_ids_parse(value: str) -> None:
    """Well-formed workload IDs are accepted unchanged."""
    assert str(parse_spiffe_id(value)) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("spiffe://Example.org/agent", "canonical"),
        ("spiffe://example.org", "trust domain root"),
        ("spiffe://example.org/", "empty segments"),
        ("https://example.org/agent", "spiffe://"),
        ("spiffe://example.org/a/../b", "'..'"),
        ("spiffe://example.org/a?x=1", "invalid character"),
        ("spiffe://ex ample.org/a", "disallowed characters"),
        ("", "not a valid SPIFFE ID"),
    ],
)
def test_invalid_ids_are_refused(value: str, reason: str) -> None:
    """Each malformed ID is refused with its reason."""
    with pytest.raises(ValueError, match=reason):
        parse_spiffe_id(value)


def test_trust_domain_helpers() -> None:
    """Trust domains parse from a name or a root ID; upper case is refused."""
    assert parse_trust_domain("example.org").name == "example.org"
    assert parse_trust_domain("spiffe://example.org").name == "example.org"
    with pytest.raises(ValueError, match="lower-case"):
        parse_trust_domain("Example.org")
    assert trust_domain_of("spiffe://example.org/agent/x") == "example.org"
