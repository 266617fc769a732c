"""The development trust domain: everything `broker dev` needs, generated at run time.

Layout (contract section 2), under the chosen directory:

    config.yaml                 runs as is with `broker serve --config`
    policy.yaml                 the development policy
    rego/policy.rego, data.json the same policy in Rego (`policy: {engine: rego, bundle: rego}`)
    ca/bundle.pem, ca/key.pem   the X.509 authority
    broker/svid.pem, key.pem    spiffe://TD/broker (also DNS localhost, IP 127.0.0.1)
    agents/NAME/svid.pem, key.pem   spiffe://TD/agent/NAME for claims and analytics
    admin/svid.pem, key.pem     spiffe://TD/admin
    jwt/bundle.jwks, key.pem    the JWT-SVID authority (ES256)
    idp/jwks.json, key.pem      the development identity provider (EdDSA)
    audit.log                   written by the running broker

Private keys are written 0600 and the directory 0700; none of it belongs in git.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from broker.dev import templates
from broker.dev.pki import (
    cert_pem,
    default_validity,
    issue_ca,
    issue_leaf,
    key_pem,
    new_ec_key,
    new_ed25519_key,
)
from broker.dev.rego_policy import policy_data_json, policy_rego
from broker.errors import ConfigError
from broker.fileio import PUBLIC_MODE, SECRET_MODE, ensure_private_dir, write_atomic
from broker.identity.material import spiffe_id_of
from broker.issuers.jwt.keys import add_key
from broker.jose import public_jwk
from broker.spiffe_id import parse_trust_domain
from broker.typing import Clock

__all__ = [
    "DEMO_AGENTS",
    "DevTrustDomain",
    "init_trust_domain",
    "mint_jwt_svid",
    "mint_user_token",
    "open_trust_domain",
]

DEMO_AGENTS = ("claims", "analytics")
DEFAULT_TRUST_DOMAIN = "example.org"
IDP_AUDIENCE = "credential-broker"
CA_DAYS = 365
SVID_DAYS = 30
RENEW_BEFORE = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class DevTrustDomain:
    """Paths and names of a development trust domain."""

    root: Path
    trust_domain: str

    @property
    def config(self) -> Path:
        """`config.yaml`."""
        return self.root / "config.yaml"

    @property
    def policy(self) -> Path:
        """`policy.yaml`."""
        return self.root / "policy.yaml"

    @property
    def policy_bundle(self) -> Path:
        """`rego/`: the development policy in Rego (`policy.rego` and `data.json`)."""
        return self.root / "rego"

    @property
    def ca_bundle(self) -> Path:
        """The X.509 bundle."""
        return self.root / "ca" / "bundle.pem"

    @property
    def idp_issuer(self) -> str:
        """The development identity provider's issuer."""
        return f"https://idp.{self.trust_domain}"

    @property
    def broker_id(self) -> str:
        """The broker's SPIFFE ID."""
        return f"spiffe://{self.trust_domain}/broker"

    def agent_dir(self, name: str) -> Path:
        """Directory of a demo agent's SVID."""
        return self.root / "agents" / name

    def agent_id(self, name: str) -> str:
        """SPIFFE ID of a demo agent."""
        return f"spiffe://{self.trust_domain}/agent/{name}"


_LeafSpec = tuple[str, tuple[str, ...], tuple[str, ...]]


def _leaves(td: DevTrustDomain) -> dict[Path, _LeafSpec]:
    """Every leaf SVID: directory -> (SPIFFE ID, DNS names, IP addresses)."""
    leaves: dict[Path, _LeafSpec] = {
        td.root / "broker": (td.broker_id, ("localhost",), ("127.0.0.1", "::1"))
    }
    for name in DEMO_AGENTS:
        leaves[td.agent_dir(name)] = (td.agent_id(name), (), ())
    leaves[td.root / "admin"] = (f"spiffe://{td.trust_domain}/admin", (), ())
    return leaves


def _write_svid(
    directory: Path,
    *,
    spiffe_id: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    now: datetime,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
) -> None:
    key = new_ec_key()
    not_before, not_after = default_validity(now, SVID_DAYS)
    cert = issue_leaf(
        issuer=ca,
        public_key=key.public_key(),
        uris=[spiffe_id],
        dns_names=dns,
        ip_addresses=ips,
        not_before=not_before,
        not_after=not_after,
    )
    ensure_private_dir(directory)
    write_atomic(directory / "key.pem", key_pem(key), mode=SECRET_MODE)
    write_atomic(directory / "svid.pem", cert_pem(cert), mode=PUBLIC_MODE)


def _generate(td: DevTrustDomain, now: datetime) -> None:
    ensure_private_dir(td.root)
    ensure_private_dir(td.root / "agents")
    ca_key = new_ec_key()
    not_before, not_after = default_validity(now, CA_DAYS)
    ca_cert = issue_ca(td.trust_domain, ca_key, not_before=not_before, not_after=not_after)
    ensure_private_dir(td.root / "ca")
    write_atomic(td.root / "ca" / "key.pem", key_pem(ca_key), mode=SECRET_MODE)
    write_atomic(td.ca_bundle, cert_pem(ca_cert), mode=PUBLIC_MODE)
    for directory, (spiffe_id, dns, ips) in _leaves(td).items():
        _write_svid(directory, spiffe_id=spiffe_id, ca=(ca_cert, ca_key), now=now, dns=dns, ips=ips)

    # The JWT-SVID authority signs ES256: the JWT-SVID spec allows RS/ES/PS only.
    jwt_key = new_ec_key()
    ensure_private_dir(td.root / "jwt")
    write_atomic(td.root / "jwt" / "key.pem", key_pem(jwt_key), mode=SECRET_MODE)
    jwt_jwk = public_jwk(jwt_key, alg="ES256", use="jwt-svid")
    write_atomic(
        td.root / "jwt" / "bundle.jwks",
        _json({"keys": [jwt_jwk], "spiffe_refresh_hint": 300}),
        mode=PUBLIC_MODE,
    )

    idp_key = new_ed25519_key()
    ensure_private_dir(td.root / "idp")
    write_atomic(td.root / "idp" / "key.pem", key_pem(idp_key), mode=SECRET_MODE)
    write_atomic(
        td.root / "idp" / "jwks.json",
        _json({"keys": [public_jwk(idp_key, alg="EdDSA")]}),
        mode=PUBLIC_MODE,
    )

    ensure_private_dir(td.root / "issuer")
    add_key(
        td.root / "issuer" / "keys.json", "ES256", now=now.timestamp(), publish_ahead=0, leeway=60
    )

    ensure_private_dir(td.root / "audit")
    write_atomic(td.root / "audit" / "hmac.key", secrets.token_hex(32).encode() + b"\n")
    checkpoint = new_ed25519_key()
    write_atomic(td.root / "audit" / "checkpoint.key", key_pem(checkpoint))
    write_atomic(
        td.root / "audit" / "checkpoint.pub",
        checkpoint.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        mode=PUBLIC_MODE,
    )

    write_atomic(td.policy, templates.policy_yaml(td.trust_domain).encode(), mode=PUBLIC_MODE)
    ensure_private_dir(td.policy_bundle)
    write_atomic(td.policy_bundle / "policy.rego", policy_rego().encode(), mode=PUBLIC_MODE)
    data = policy_data_json(td.trust_domain).encode()
    write_atomic(td.policy_bundle / "data.json", data, mode=PUBLIC_MODE)
    # config.yaml last: its presence marks a complete trust domain.
    write_atomic(td.config, templates.config_yaml(td.trust_domain).encode(), mode=SECRET_MODE)


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def _trust_domain_of_ca(root: Path) -> str:
    try:
        ca = x509.load_pem_x509_certificate((root / "ca" / "bundle.pem").read_bytes())
    except (OSError, ValueError):
        raise ConfigError(f"{root}: ca/bundle.pem is missing or not a certificate") from None
    spiffe_id = spiffe_id_of(ca)
    if spiffe_id is None:
        raise ConfigError(f"{root}: ca/bundle.pem carries no SPIFFE ID")
    return spiffe_id.removeprefix("spiffe://").split("/", 1)[0]


def open_trust_domain(root: Path) -> DevTrustDomain:
    """Open an existing development trust domain.

    Raises:
        ConfigError: `root` is not one.
    """
    if not (root / "config.yaml").is_file():
        raise ConfigError(f"{root}: not a development trust domain (run 'broker dev init')")
    return DevTrustDomain(root.resolve(), _trust_domain_of_ca(root))


def _renew(td: DevTrustDomain, now: datetime) -> list[str]:
    """Re-issue leaf SVIDs that expire soon (the CA must still be valid)."""
    ca_cert = x509.load_pem_x509_certificate(td.ca_bundle.read_bytes())
    if ca_cert.not_valid_after_utc - now < RENEW_BEFORE:
        raise ConfigError(
            f"{td.root}: the development CA expires at {ca_cert.not_valid_after_utc.isoformat()}; "
            "remove the directory to generate a new trust domain"
        )
    ca_key = load_pem_private_key((td.root / "ca" / "key.pem").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{td.root}: ca/key.pem is not an EC key")
    renewed = []
    for directory, (spiffe_id, dns, ips) in _leaves(td).items():
        try:
            cert = x509.load_pem_x509_certificate((directory / "svid.pem").read_bytes())
            fresh = cert.not_valid_after_utc - now >= RENEW_BEFORE
        except (OSError, ValueError):
            fresh = False
        if not fresh:
            _write_svid(
                directory, spiffe_id=spiffe_id, ca=(ca_cert, ca_key), now=now, dns=dns, ips=ips
            )
            renewed.append(spiffe_id)
    return renewed


def init_trust_domain(
    root: Path, trust_domain: str | None, clock: Clock
) -> tuple[DevTrustDomain, bool]:
    """Create a development trust domain in `root` unless one is there.

    An existing one is reused (its leaf SVIDs renewed when they expire within a week).

    Args:
        root: The directory.
        trust_domain: The trust domain (default `example.org`); must match an existing one.
        clock: For validity periods.

    Returns:
        The trust domain and whether it was created now.

    Raises:
        ConfigError: Invalid trust domain, mismatch with an existing one, or `root`
            holds something else.
    """
    if trust_domain is not None:
        try:
            parse_trust_domain(trust_domain)
        except ValueError as exc:
            raise ConfigError(f"--trust-domain: {exc}") from None
    if (root / "config.yaml").is_file():
        existing = open_trust_domain(root)
        if trust_domain is not None and trust_domain != existing.trust_domain:
            raise ConfigError(
                f"{root} holds trust domain {existing.trust_domain!r}, not {trust_domain!r}; "
                "use another --dir or remove it"
            )
        _renew(existing, clock.now())
        return existing, False
    if root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"{root} exists and is not a development trust domain; choose another --dir"
        )
    name = trust_domain or DEFAULT_TRUST_DOMAIN
    # Build next to the target and rename, so an interrupted init leaves nothing half-made.
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _generate(DevTrustDomain(staging, name), clock.now())
        # config.yaml names paths relative to itself, so the move keeps it valid.
        if root.exists():
            root.rmdir()
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DevTrustDomain(root.resolve(), name), True


def mint_user_token(
    td: DevTrustDomain,
    *,
    user: str,
    tier: str,
    ttl: int,
    groups: tuple[str, ...],
    clock: Clock,
) -> str:
    """A user token from the development identity provider (EdDSA, kid from idp/jwks.json)."""
    key = load_pem_private_key((td.root / "idp" / "key.pem").read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{td.root}: idp/key.pem is not an Ed25519 key")
    kid = public_jwk(key, alg="EdDSA")["kid"]
    now = int(clock.time())
    claims = {
        "iss": td.idp_issuer,
        "aud": IDP_AUDIENCE,
        "sub": user,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(16),
        "tier": tier,
        "groups": list(groups),
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"})


def mint_jwt_svid(td: DevTrustDomain, *, agent: str, audience: str, ttl: int, clock: Clock) -> str:
    """A JWT-SVID for a demo agent, signed by the development JWT-SVID authority."""
    key = load_pem_private_key((td.root / "jwt" / "key.pem").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{td.root}: jwt/key.pem is not an EC key")
    kid = public_jwk(key, alg="ES256")["kid"]
    now = int(clock.time())
    claims = {
        "sub": td.agent_id(agent),
        "aud": [audience],
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "JWT"})
