"""SPIFFE ID parsing, on top of py-spiffe's spec-conformant parser."""

from __future__ import annotations

from spiffe import SpiffeId, TrustDomain
from spiffe.errors import PySpiffeError

__all__ = ["parse_spiffe_id", "parse_trust_domain", "trust_domain_of"]


def parse_spiffe_id(value: str, *, allow_root: bool = False) -> SpiffeId:
    """Parse and validate a SPIFFE ID.

    Args:
        value: The candidate, such as `spiffe://example.org/agent/claims`.
        allow_root: Whether a trust-domain root (no path) is acceptable. Workload
            identities never are (X509-SVID spec section 3.1).

    Returns:
        The parsed ID.

    Raises:
        ValueError: With a message fit for a caller.
    """
    try:
        parsed = SpiffeId(value)
    except (PySpiffeError, ValueError) as exc:
        raise ValueError(f"{value!r} is not a valid SPIFFE ID: {_reason(exc)}") from None
    if str(parsed) != value:
        # py-spiffe lowercases the trust domain; the spec forbids upper case outright.
        raise ValueError(f"{value!r} is not a valid SPIFFE ID: not in canonical (lower-case) form")
    if not allow_root and not parsed.path:
        raise ValueError(f"{value!r} is a trust domain root, not a workload SPIFFE ID")
    return parsed


def parse_trust_domain(value: str) -> TrustDomain:
    """Parse a trust domain name (or the root SPIFFE ID of one).

    Raises:
        ValueError: With a message fit for a caller.
    """
    try:
        parsed = TrustDomain(value)
    except (PySpiffeError, ValueError) as exc:
        raise ValueError(f"{value!r} is not a valid trust domain: {_reason(exc)}") from None
    if parsed.name != value.removeprefix("spiffe://"):
        raise ValueError(f"{value!r} is not a valid trust domain: not in lower-case form")
    return parsed


def trust_domain_of(spiffe_id: str) -> str:
    """Return the trust domain name of an already validated SPIFFE ID."""
    return spiffe_id.removeprefix("spiffe://").split("/", 1)[0]


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    # py-spiffe prefixes the offending input; the caller already has it.
    return text.rsplit(": ", 1)[-1] if text else "malformed"
