"""The development trust domain: contract layout, private keys, reuse, renewal, tokens."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import jwt
import pytest
from cryptography import x509

from broker.authn.x509 import check_leaf
from broker.config.settings import load_settings
from broker.dev.trust_domain import init_trust_domain, mint_jwt_svid, mint_user_token
from broker.errors import ConfigError
from tests.support.clock import ManualClock

PUBLIC = [
    "config.yaml",
    "policy.yaml",
    "ca/bundle.pem",
    "broker/svid.pem",
    "agents/claims/svid.pem",
    "agents/analytics/svid.pem",
    "admin/svid.pem",
    "jwt/bundle.jwks",
    "idp/jwks.json",
]
SECRET = [
    "ca/key.pem",
    "broker/key.pem",
    "agents/claims/key.pem",
    "agents/analytics/key.pem",
    "admin/key.pem",
    "jwt/key.pem",
    "idp/key.pem",
]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_creates_the_contract_layout(tmp_path: Path, clock: ManualClock) -> None:
    """Every path of contract section 2 exists; keys are 0600 and directories 0700."""
    root = tmp_path / "dev"
    td, created = init_trust_domain(root, None, clock)
    assert created
    assert td.trust_domain == "example.org"
    for name in PUBLIC + SECRET:
        assert (root / name).is_file(), name
    for name in SECRET:
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "config.yaml").stat().st_mode) == 0o600


def test_svids_are_valid_x509_svids_with_the_contract_ids(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Each SVID passes the broker's own leaf rules and carries the expected SPIFFE ID."""
    root = tmp_path / "dev"
    init_trust_domain(root, "acme.test", clock)
    expected = {
        "broker/svid.pem": "spiffe://acme.test/broker",
        "agents/claims/svid.pem": "spiffe://acme.test/agent/claims",
        "agents/analytics/svid.pem": "spiffe://acme.test/agent/analytics",
        "admin/svid.pem": "spiffe://acme.test/admin",
    }
    for name, spiffe_id in expected.items():
        assert check_leaf(_cert(root / name)) == spiffe_id
    broker = _cert(root / "broker/svid.pem")
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_config_yaml_loads_as_is(tmp_path: Path, clock: ManualClock) -> None:
    """The generated config.yaml is a valid configuration for `broker serve`."""
    td, _ = init_trust_domain(tmp_path / "dev", None, clock)
    settings = load_settings(td.config)
    assert settings.spiffe_id == "spiffe://example.org/broker"
    assert settings.admins == frozenset({"spiffe://example.org/admin"})


def test_init_reuses_an_existing_trust_domain(tmp_path: Path, clock: ManualClock) -> None:
    """A second init keeps the CA and keys; a different trust domain is refused."""
    root = tmp_path / "dev"
    init_trust_domain(root, None, clock)
    serial = _cert(root / "ca/bundle.pem").serial_number
    _, created = init_trust_domain(root, None, clock)
    assert not created
    assert _cert(root / "ca/bundle.pem").serial_number == serial
    with pytest.raises(ConfigError, match=r"holds trust domain 'example\.org', not 'other\.org'"):
        init_trust_domain(root, "other.org", clock)


def test_init_refuses_a_foreign_directory(tmp_path: Path, clock: ManualClock) -> None:
    """A non-empty directory that is not a trust domain is never overwritten."""
    root = tmp_path / "dev"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a development trust domain"):
        init_trust_domain(root, None, clock)
    assert (root / "precious.txt").read_text() == "keep me"


def test_invalid_trust_domain_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    """--trust-domain must be a valid SPIFFE trust domain."""
    with pytest.raises(ConfigError, match="--trust-domain"):
        init_trust_domain(tmp_path / "dev", "Not Valid", clock)


def test_leaf_svids_are_renewed_before_expiry(tmp_path: Path, clock: ManualClock) -> None:
    """Reusing a trust domain within a week of leaf expiry re-issues the leaves, not the CA."""
    root = tmp_path / "dev"
    init_trust_domain(root, None, clock)
    ca_serial = _cert(root / "ca/bundle.pem").serial_number
    leaf_serial = _cert(root / "agents/claims/svid.pem").serial_number
    clock.advance(25 * 86400)
    init_trust_domain(root, None, clock)
    assert _cert(root / "ca/bundle.pem").serial_number == ca_serial
    renewed = _cert(root / "agents/claims/svid.pem")
    assert renewed.serial_number != leaf_serial
    assert renewed.not_valid_after_utc > clock.now()


def test_user_token_verifies_with_idp_jwks_alone(tmp_path: Path, clock: ManualClock) -> None:
    """A development user token verifies against idp/jwks.json with pyjwt and nothing else."""
    td, _ = init_trust_domain(tmp_path / "dev", None, clock)
    token = mint_user_token(
        td, user="alice", tier="gold", ttl=120, groups=("support",), clock=clock
    )
    jwks = jwt.PyJWKSet.from_json((td.root / "idp/jwks.json").read_text())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=["EdDSA"],
        audience="credential-broker",
        issuer="https://idp.example.org",
    )
    assert claims["sub"] == "alice"
    assert claims["tier"] == "gold"
    assert claims["groups"] == ["support"]
    assert claims["exp"] - claims["iat"] == 120


def test_jwt_svid_authority_is_es256(tmp_path: Path, clock: ManualClock) -> None:
    """The JWT-SVID authority publishes an ES256 key (the JWT-SVID spec forbids EdDSA)."""
    td, _ = init_trust_domain(tmp_path / "dev", None, clock)
    bundle = json.loads((td.root / "jwt/bundle.jwks").read_text())
    assert [k["alg"] for k in bundle["keys"]] == ["ES256"]
    token = mint_jwt_svid(td, agent="claims", audience=td.broker_id, ttl=60, clock=clock)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert jwt.get_unverified_header(token)["kid"] == bundle["keys"][0]["kid"]
