"""The end-of-session secret scan finds what it looks for (so its silence means something)."""

from __future__ import annotations

from pathlib import Path

from tests.support import leaks


def test_scan_finds_tokens_signatures_and_clear_lease_ids(tmp_path: Path) -> None:
    """A token, a bare JWT signature and a clear lease id in an audit file are all reported."""
    token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    leaks.remember(token)
    leaks.FORBIDDEN_IN_AUDIT.add("database/creds/role/LEASE123")
    log = tmp_path / "broker.log"
    log.write_text("nothing to see\n")
    audit_dir = tmp_path / "td"
    audit_dir.mkdir()
    (audit_dir / "audit.log").write_text(
        '{"x":"c2lnbmF0dXJlLW9mLXRoZS10b2tlbg","y":"database/creds/role/LEASE123"}\n'
    )
    try:
        assert leaks.scan([log], [audit_dir]) != []
        findings = leaks.scan([log], [audit_dir])
        assert any("secret c2lnbmF0dXJl" in f for f in findings)
        assert any("lease id in clear" in f for f in findings)
        log.write_text(f"leaked {token}\n")
        assert any(str(log) in f for f in leaks.scan([log], []))
    finally:
        leaks.SECRETS.discard(token)
        leaks.SECRETS.discard(token.rsplit(".", 1)[1])
        leaks.FORBIDDEN_IN_AUDIT.discard("database/creds/role/LEASE123")
