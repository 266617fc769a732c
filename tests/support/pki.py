"""Run-time PKI for tests: trust domains, SVIDs (well-formed or crafted), JWT-SVIDs."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.dev.pki import cert_pem, issue_ca, issue_leaf, key_pem, new_ec_key
from broker.fileio import write_atomic
from broker.jose import public_jwk
from tests.support import leaks


@dataclass
class Svid:
    """A leaf certificate, its chain up to (not including) the root, and its key."""

    spiffe_id: str
    chain: list[x509.Certificate]
    key: ec.EllipticCurvePrivateKey

    @property
    def cert(self) -> x509.Certificate:
        return self.chain[0]

    def chain_pem(self) -> bytes:
        return cert_pem(*self.chain)

    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def chain_der(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.chain)

    def key_der(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(
        self, directory: Path, cert_name: str = "svid.pem", key_name: str = "key.pem"
    ) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / cert_name, self.chain_pem(), mode=0o644)
        write_atomic(directory / key_name, self.key_pem())
        return directory / cert_name, directory / key_name


@dataclass
class TrustDomain:
    """A trust domain with an X.509 CA (optionally an intermediate) and a JWT-SVID authority."""

    name: str
    intermediate: bool = False
    ca_key: ec.EllipticCurvePrivateKey = field(default_factory=new_ec_key)
    jwt_key: ec.EllipticCurvePrivateKey = field(default_factory=new_ec_key)
    ca_cert: x509.Certificate | None = None

    @classmethod
    def from_dev(cls, root: Path, name: str = "example.org") -> TrustDomain:
        """The trust domain `broker dev init` wrote to `root` (its CA and JWT authority)."""
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        ca_key = load_pem_private_key((root / "ca" / "key.pem").read_bytes(), password=None)
        jwt_key = load_pem_private_key((root / "jwt" / "key.pem").read_bytes(), password=None)
        ca = x509.load_pem_x509_certificate((root / "ca" / "bundle.pem").read_bytes())
        return cls(name, ca_key=ca_key, jwt_key=jwt_key, ca_cert=ca)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        """Issue the CA (and intermediate) unless given, and name the JWT authority."""
        now = datetime.now(UTC)
        self.jwt_kid = public_jwk(self.jwt_key, alg="ES256")["kid"]
        self.signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
        self.intermediates: list[x509.Certificate] = []
        if self.ca_cert is not None:
            self.ca = self.ca_cert
            self.signer = (self.ca, self.ca_key)
            return
        self.ca = issue_ca(
            self.name,
            self.ca_key,
            not_before=now - timedelta(days=1),
            not_after=now + timedelta(days=30),
        )
        self.signer = (self.ca, self.ca_key)
        if self.intermediate:
            inter_key = new_ec_key()
            inter = issue_ca(
                self.name,
                inter_key,
                not_before=now - timedelta(days=1),
                not_after=now + timedelta(days=30),
                parent=(self.ca, self.ca_key),
                common_name=f"{self.name} intermediate",
            )
            self.signer = (inter, inter_key)
            self.intermediates = [inter]

    def bundle_pem(self) -> bytes:
        return cert_pem(self.ca)

    def bundle_der(self) -> bytes:
        return self.ca.public_bytes(serialization.Encoding.DER)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.jwt_key, alg="ES256", use="jwt-svid")]}

    def jwks_bytes(self) -> bytes:
        return json.dumps(self.jwks()).encode()

    def svid(
        self,
        path: str = "/agent/test",
        *,
        uris: Sequence[str] | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
        **overrides: Any,
    ) -> Svid:
        """Issue a leaf; by default a valid X.509-SVID for spiffe://NAME/PATH."""
        now = datetime.now(UTC)
        spiffe_id = f"spiffe://{self.name}{path}"
        key = new_ec_key()
        issuer = signer or self.signer
        cert = issue_leaf(
            issuer=issuer,
            public_key=key.public_key(),
            uris=[spiffe_id] if uris is None else list(uris),
            not_before=not_before or now - timedelta(minutes=5),
            not_after=not_after or now + timedelta(hours=1),
            **overrides,
        )
        chain = [cert] + (self.intermediates if signer is None else [])
        return Svid(spiffe_id, chain, key)

    def jwt_svid(
        self,
        path: str = "/agent/test",
        *,
        audience: str | list[str] | None = None,
        ttl: int = 300,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        key: Any = None,
        algorithm: str = "ES256",
        drop: Sequence[str] = (),
    ) -> str:
        """Sign a JWT-SVID (overrides let tests break one rule at a time)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "sub": f"spiffe://{self.name}{path}",
            "aud": audience if audience is not None else [],
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_hex(8),
        }
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
        head: dict[str, Any] = {"kid": self.jwt_kid, "typ": "JWT"}
        head.update(headers or {})
        token = jwt.encode(body, key or self.jwt_key, algorithm=algorithm, headers=head)
        leaks.remember(token)
        return token
